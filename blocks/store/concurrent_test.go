package store

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// sharedBlobs is the set of blobs every concurrent writer pushes: a few large
// ones (so writes overlap in time) and many small ones. Each is a real gzip
// block member (raw sizes are multiples of 512, so there is no padding), so
// that the member records pushAll writes are valid.
func sharedBlobs() [][]byte {
	var out [][]byte
	for i := range 40 {
		n := 512 * (1 + i%7)
		if i%10 == 0 {
			n = 3 << 20
		}
		b := make([]byte, n)
		r := rand.New(rand.NewPCG(uint64(i), 42))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(b)
		zw.Close()
		out = append(out, z.Bytes())
	}
	return out
}

// rawOf is the raw block digest of a member of sharedBlobs.
func rawOf(member []byte) (digest.Digest, error) {
	zr, err := gzip.NewReader(bytes.NewReader(member))
	if err != nil {
		return "", err
	}
	return digest.SHA256.FromReader(zr)
}

// pushAll pushes blobs in an order of its own (seed), alternating Push and
// Ingest, then tags the last one under its own name and a shared one.
func pushAll(ctx context.Context, s *Store, blobs [][]byte, seed uint64, name string) error {
	order := rand.New(rand.NewPCG(seed, 7)).Perm(len(blobs))
	var last ocispec.Descriptor
	for k, i := range order {
		b := blobs[i]
		d := descOf(blocks.MediaTypeBlock, b)
		if k%2 == 0 {
			if err := s.Push(ctx, d, bytes.NewReader(b)); err != nil {
				return err
			}
		} else {
			got, err := s.Ingest(ctx, blocks.MediaTypeBlock, bytes.NewReader(b))
			if err != nil {
				return err
			}
			if got.Digest != d.Digest {
				return fmt.Errorf("Ingest = %s, want %s", got.Digest, d.Digest)
			}
		}
		raw, err := rawOf(b)
		if err != nil {
			return err
		}
		if err := s.RecordMember(ctx, raw, blocks.Gzip, descOf(blocks.MediaTypeMemberGzip, b)); err != nil {
			return err
		}
		last = d
	}
	if err := s.Tag(ctx, name, last); err != nil {
		return err
	}
	return s.Tag(ctx, "shared", last)
}

// checkAll checks that every blob is present and intact and nothing is left
// in the ingest directory.
func checkAll(t *testing.T, s *Store, blobs [][]byte) {
	t.Helper()
	var problems []Problem
	if err := s.Verify(context.Background(), func(p Problem) { problems = append(problems, p) }); err != nil {
		t.Fatalf("Verify = %v: %v", err, problems)
	}
	for _, b := range blobs {
		d := descOf(blocks.MediaTypeBlock, b)
		got, err := os.ReadFile(s.BlobPath(d.Digest))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("blob %s: %d bytes, %v", d.Digest, len(got), err)
		}
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Fatalf("temp files left: %v", names)
	}
}

func TestConcurrentGoroutinesPushSameBlobs(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	blobs := sharedBlobs()
	const writers = 6
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			// Each writer opens the store itself, as separate commands do.
			s2, err := Open(s.Root())
			if err == nil {
				err = pushAll(ctx, s2, blobs, uint64(w), fmt.Sprint("writer-", w))
			}
			errs[w] = err
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", w, err)
		}
	}
	checkAll(t, s, blobs)
	tags, err := s.Tags(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != writers+1 {
		t.Fatalf("%d tags, want %d: %v", len(tags), writers+1, tags)
	}
}

// helperEnv makes the test binary act as a store writer process.
const helperEnv = "BLOCKFILE_STORE_TEST_WRITER"

func TestHelperWriterProcess(t *testing.T) {
	root := os.Getenv(helperEnv)
	if root == "" {
		t.Skip("helper process for TestConcurrentProcessesPushSameBlobs")
	}
	s, err := Create(root)
	if err != nil {
		t.Fatal(err)
	}
	var seed uint64
	fmt.Sscan(os.Getenv(helperEnv+"_SEED"), &seed)
	if err := pushAll(context.Background(), s, sharedBlobs(), seed, fmt.Sprint("process-", seed)); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentProcessesPushSameBlobs(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("inside a helper")
	}
	root := t.TempDir() + "/store" // the helpers create it, racing
	const procs = 3
	cmds := make([]*exec.Cmd, procs)
	outs := make([]bytes.Buffer, procs)
	for i := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriterProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+root, fmt.Sprintf("%s_SEED=%d", helperEnv, i))
		cmd.Stdout, cmd.Stderr = &outs[i], &outs[i]
		cmds[i] = cmd
	}
	for i, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			t.Fatalf("start writer %d: %v", i, err)
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("writer process %d: %v\n%s", i, err, outs[i].String())
		}
	}
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	checkAll(t, s, sharedBlobs())
	tags, err := s.Tags(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range procs {
		if _, ok := tags[fmt.Sprint("process-", i)]; !ok {
			t.Errorf("tag process-%d lost; tags: %v", i, tags)
		}
	}
}

func TestTagResolveUntag(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	a := push(t, s, ocispec.MediaTypeImageManifest, []byte(`{"a":1}`))
	b := push(t, s, ocispec.MediaTypeImageManifest, []byte(`{"b":2}`))
	a.Annotations = map[string]string{"keep": "me"}
	if err := s.Tag(ctx, "app:v1", a); err != nil {
		t.Fatal(err)
	}
	if a.Annotations[ocispec.AnnotationRefName] != "" {
		t.Fatal("Tag changed the caller's annotations")
	}
	got, err := s.Resolve(ctx, "app:v1")
	if err != nil || got.Digest != a.Digest || got.Annotations["keep"] != "me" || got.Annotations[ocispec.AnnotationRefName] != "app:v1" {
		t.Fatalf("Resolve = %+v, %v", got, err)
	}
	// Tagging the same name again replaces the entry.
	if err := s.Tag(ctx, "app:v1", b); err != nil {
		t.Fatal(err)
	}
	idx, _ := s.readIndex()
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != b.Digest {
		t.Fatalf("index.json after retag: %+v", idx.Manifests)
	}
	if err := s.Untag(ctx, "app:v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve(ctx, "app:v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve after Untag = %v", err)
	}
	if err := s.Untag(ctx, "app:v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Untag = %v", err)
	}
	// A missing blob cannot be tagged.
	if err := s.Tag(ctx, "ghost", descOf("x", []byte("ghost"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Tag of a missing blob = %v", err)
	}
}

func TestConcurrentTaggers(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	d := push(t, s, ocispec.MediaTypeImageManifest, []byte(`{}`))
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n*2)
	for i := range n {
		wg.Go(func() {
			s2, err := Open(s.Root())
			if err != nil {
				errs <- err
				return
			}
			errs <- s2.Tag(ctx, fmt.Sprint("t", i), d)
			errs <- s2.Tag(ctx, "same", d)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	tags, err := s.Tags(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != n+1 {
		t.Fatalf("%d tags, want %d (a concurrent Tag was lost)", len(tags), n+1)
	}
}

func TestMemberIndex(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	raw := descOf(blocks.MediaTypeBlock, []byte("raw block"))
	member := push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, []byte("raw block")))
	member.Annotations = map[string]string{blocks.AnnotationBlockDigest: string(raw.Digest)}

	if _, ok, err := s.LookupMember(ctx, raw.Digest, blocks.Gzip); ok || err != nil {
		t.Fatalf("Lookup before Record = %v, %v", ok, err)
	}
	if err := s.RecordMember(ctx, raw.Digest, blocks.Gzip, member); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.LookupMember(ctx, raw.Digest, blocks.Gzip)
	if !ok || err != nil || got.Digest != member.Digest || got.Size != member.Size ||
		got.MediaType != blocks.MediaTypeMemberGzip || got.Annotations[blocks.AnnotationBlockDigest] != string(raw.Digest) {
		t.Fatalf("Lookup = %+v, %v, %v", got, ok, err)
	}
	if _, err := os.Stat(s.path("blockfile/members/gzip/" + raw.Digest.Encoded())); err != nil {
		t.Fatalf("member record file: %v", err)
	}
	// Other compressions are separate.
	if _, ok, _ := s.LookupMember(ctx, raw.Digest, blocks.Zstd); ok {
		t.Fatal("zstd lookup found the gzip member")
	}
	// A record whose member blob is gone is not found.
	os.Remove(s.BlobPath(member.Digest))
	if _, ok, err := s.LookupMember(ctx, raw.Digest, blocks.Gzip); ok || err != nil {
		t.Fatalf("Lookup with the member gone = %v, %v", ok, err)
	}
	// A damaged record (a crash mid-write) is reported by Verify, reads as
	// absent (and is dropped), and the next RecordMember repairs it.
	push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, []byte("raw block")))
	os.WriteFile(s.path("blockfile/members/gzip/"+raw.Digest.Encoded()), nil, 0o644)
	var problems []Problem
	if err := s.Verify(ctx, func(p Problem) { problems = append(problems, p) }); !errors.Is(err, ErrProblems) ||
		len(problems) != 1 || problems[0].Kind != ProblemBadRecord {
		t.Fatalf("Verify with a damaged member record = %v, %v", err, problems)
	}
	if _, ok, err := s.LookupMember(ctx, raw.Digest, blocks.Gzip); ok || err != nil {
		t.Fatalf("Lookup of a damaged record = %v, %v", ok, err)
	}
	if err := s.RecordMember(ctx, raw.Digest, blocks.Gzip, member); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.LookupMember(ctx, raw.Digest, blocks.Gzip); !ok {
		t.Fatal("RecordMember did not repair the record")
	}
	if err := s.RecordMember(ctx, raw.Digest, "brotli", member); !errors.Is(err, ErrInvalid) {
		t.Fatalf("RecordMember(brotli) = %v", err)
	}
	if _, _, err := s.LookupMember(ctx, "sha256:../../x", blocks.Gzip); !errors.Is(err, ErrInvalid) {
		t.Fatalf("LookupMember(bad digest) = %v", err)
	}
}
