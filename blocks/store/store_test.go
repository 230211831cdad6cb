package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Create(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func descOf(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

func push(t *testing.T, s *Store, mediaType string, b []byte) ocispec.Descriptor {
	t.Helper()
	d := descOf(mediaType, b)
	if err := s.Push(context.Background(), d, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return d
}

// ingestEntries lists the temp files left in the ingest directory.
func ingestEntries(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.path(ingestDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestOpenRefusesMissingStore(t *testing.T) {
	root := filepath.Join(t.TempDir(), "typo")
	_, err := Open(root)
	if !errors.Is(err, ErrNoStore) || !strings.Contains(err.Error(), "no store at "+root) {
		t.Fatalf("Open(missing) = %v, want ErrNoStore naming %s", err, root)
	}
	if _, serr := os.Stat(root); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("Open created %s (%v)", root, serr)
	}
	// An existing directory that is not a store is not one either.
	if _, err := Open(t.TempDir()); !errors.Is(err, ErrNoStore) {
		t.Fatalf("Open(empty dir) = %v, want ErrNoStore", err)
	}
}

func TestCreateRefusesNonEmptyDirectory(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(root); !errors.Is(err, ErrNoStore) || !strings.Contains(err.Error(), "notes.txt") {
		t.Fatalf("Create(non-empty dir) = %v, want ErrNoStore naming notes.txt", err)
	}
	if _, err := os.Stat(filepath.Join(root, "oci-layout")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Create wrote into a foreign directory: %v", err)
	}
}

func TestCreateCreatesLayout(t *testing.T) {
	root := filepath.Join(t.TempDir(), "a", "b")
	s, err := Create(root)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "oci-layout"))
	if err != nil || string(b) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout = %q, %v", b, err)
	}
	b, err = os.ReadFile(filepath.Join(root, "index.json"))
	if err != nil || !strings.Contains(string(b), `"manifests":[]`) {
		t.Fatalf("index.json = %q, %v", b, err)
	}
	// Reopening keeps what is there.
	d := push(t, s, blocks.MediaTypeBlock, []byte("x"))
	if err := s.Tag(context.Background(), "x", d); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Resolve(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesOtherLayoutVersion(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "oci-layout"), []byte(`{"imageLayoutVersion":"9"}`), 0o644)
	if _, err := Open(root); err == nil || !strings.Contains(err.Error(), "oci-layout") {
		t.Fatalf("Open = %v, want a layout version error naming oci-layout", err)
	}
}

func TestDefaultRoot(t *testing.T) {
	t.Setenv("BLOCKFILE_STORE", "/x/store")
	if got := DefaultRoot(); got != "/x/store" {
		t.Fatalf("with BLOCKFILE_STORE: %s", got)
	}
	t.Setenv("BLOCKFILE_STORE", "")
	t.Setenv("XDG_DATA_HOME", "/data")
	if got := DefaultRoot(); got != "/data/blockfile/store" {
		t.Fatalf("with XDG_DATA_HOME: %s", got)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := DefaultRoot(); got != "/home/u/.local/share/blockfile/store" {
		t.Fatalf("with HOME: %s", got)
	}
}

func TestPushFetchRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	content := bytes.Repeat([]byte("block data "), 100000)
	d := push(t, s, blocks.MediaTypeBlock, content)

	// The blob file is the content itself, read-only.
	fi, err := os.Stat(s.BlobPath(d.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Errorf("blob mode %v, want 0444", fi.Mode().Perm())
	}
	if s.BlobPath(d.Digest) != filepath.Join(s.Root(), "blobs", "sha256", d.Digest.Encoded()) {
		t.Errorf("BlobPath = %s", s.BlobPath(d.Digest))
	}
	rc, err := s.Fetch(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("Fetch: %d bytes, %v", len(got), err)
	}
	if ok, err := s.Exists(ctx, d.Digest); !ok || err != nil {
		t.Fatalf("Exists = %v, %v", ok, err)
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Fatalf("temp files left: %v", names)
	}
}

func TestPushExistingIsNotAnError(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	d := push(t, s, blocks.MediaTypeBlock, []byte("same"))
	// r is not even read when the blob is present.
	if err := s.Push(ctx, d, iotestErrReader{}); err != nil {
		t.Fatalf("second Push = %v", err)
	}
	got, err := s.Ingest(ctx, blocks.MediaTypeBlock, strings.NewReader("same"))
	if err != nil || got.Digest != d.Digest || got.Size != d.Size {
		t.Fatalf("Ingest of present content = %v, %v", got, err)
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("must not be read") }

// A wrong digest or size never becomes a blob, and leaves no temp file.
func TestPushMismatchLeavesNothing(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	good := []byte("the real content")
	d := descOf(blocks.MediaTypeBlock, good)
	cases := []struct {
		name    string
		content []byte
		want    error
	}{
		{"other bytes", []byte("the fake content"), ErrDigestMismatch},
		{"short", good[:5], ErrSizeMismatch},
		{"long", append(append([]byte{}, good...), "and more"...), ErrSizeMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := s.Push(ctx, d, bytes.NewReader(c.content))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), string(d.Digest)) {
				t.Fatalf("Push = %v, want %v naming %s", err, c.want, d.Digest)
			}
			if _, err := os.Stat(s.BlobPath(d.Digest)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("blob file exists after a failed push: %v", err)
			}
			if names := ingestEntries(t, s); len(names) != 0 {
				t.Fatalf("temp files left: %v", names)
			}
		})
	}
}

// A failing source (a broken network stream) leaves no blob and no temp file.
func TestPushReaderErrorLeavesNothing(t *testing.T) {
	s := newStore(t)
	d := descOf(blocks.MediaTypeBlock, []byte("abc"))
	err := s.Push(context.Background(), d, io.MultiReader(strings.NewReader("a"), iotestErrReader{}))
	if err == nil {
		t.Fatal("Push succeeded on a failing reader")
	}
	if ok, _ := s.Exists(context.Background(), d.Digest); ok {
		t.Fatal("blob present after failed push")
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Fatalf("temp files left: %v", names)
	}
}

func TestPushReplacesTruncatedBlob(t *testing.T) {
	s := newStore(t)
	content := []byte("0123456789")
	d := push(t, s, blocks.MediaTypeBlock, content)
	p := s.BlobPath(d.Digest)
	os.Chmod(p, 0o644)
	os.WriteFile(p, content[:3], 0o444)
	if err := s.Push(context.Background(), d, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, content) {
		t.Fatalf("blob = %q after re-push", b)
	}
}

func TestPushRejectsBadDigest(t *testing.T) {
	s := newStore(t)
	for _, d := range []digest.Digest{"", "sha256:../../etc", "md5:abc", "sha256:ABC"} {
		err := s.Push(context.Background(), ocispec.Descriptor{Digest: d, Size: 1}, strings.NewReader("x"))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("Push(%q) = %v, want ErrInvalid", d, err)
		}
	}
}

func TestBlobWriterCloseDiscards(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "never committed")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Fatalf("temp files left: %v", names)
	}
	n := 0
	s.Walk(ctx, func(digest.Digest, int64) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d blobs after a discarded write", n)
	}

	w, _ = s.NewWriter(ctx)
	io.WriteString(w, "committed")
	d, err := w.Commit(ctx, "text/plain")
	if err != nil || d.Digest != digest.FromString("committed") || d.Size != 9 || d.MediaType != "text/plain" {
		t.Fatalf("Commit = %v, %v", d, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close after Commit = %v", err)
	}
	if ok, _ := s.Exists(ctx, d.Digest); !ok {
		t.Fatal("committed blob missing")
	}
}

// tamper rewrites the blob file of d with f applied to its content.
func tamper(t *testing.T, s *Store, d digest.Digest, f func([]byte) []byte) {
	t.Helper()
	p := s.BlobPath(d)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, f(b), 0o444); err != nil {
		t.Fatal(err)
	}
}

func TestFetchDetectsTampering(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		f    func([]byte) []byte
		want error
	}{
		{"flipped byte", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }, ErrDigestMismatch},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, ErrSizeMismatch},
		{"appended", func(b []byte) []byte { return append(b, 'x') }, ErrSizeMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			d := push(t, s, blocks.MediaTypeBlock, bytes.Repeat([]byte("abcdefgh"), 10000))
			tamper(t, s, d.Digest, c.f)
			// A wrong size may already fail Fetch; a wrong digest fails the read.
			var got []byte
			rc, err := s.Fetch(ctx, d)
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			} else if c.want == ErrDigestMismatch {
				t.Fatalf("Fetch = %v; a same-size tamper must fail the read, not the open", err)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("read = %v, want %v", err, c.want)
			}
			for _, name := range []string{string(d.Digest), s.BlobPath(d.Digest)} {
				if !strings.Contains(err.Error(), name) {
					t.Errorf("error %q does not name %s", err, name)
				}
			}
			if int64(len(got)) > d.Size {
				t.Errorf("reader returned %d bytes, more than the declared %d", len(got), d.Size)
			}
		})
	}
}

func TestFetchMissing(t *testing.T) {
	s := newStore(t)
	d := descOf(blocks.MediaTypeBlock, []byte("nope"))
	if _, err := s.Fetch(context.Background(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch = %v, want ErrNotFound", err)
	}
}

// infinite is a reader that never ends: a verifier must stop it at desc.Size+1.
type infinite struct{ n int64 }

func (r *infinite) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	r.n += int64(len(p))
	return len(p), nil
}

func TestVerifyReader(t *testing.T) {
	good := []byte("hello, blocks")
	d := descOf(blocks.MediaTypeBlock, good)
	if b, err := io.ReadAll(VerifyReader(bytes.NewReader(good), d)); err != nil || !bytes.Equal(b, good) {
		t.Fatalf("good content: %q, %v", b, err)
	}
	bad := bytes.ToUpper(good)
	if _, err := io.ReadAll(VerifyReader(bytes.NewReader(bad), d)); !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), string(d.Digest)) {
		t.Fatalf("bad content: %v", err)
	}
	// A huge declared size is not allocated, and an endless source is cut
	// one byte past the declared size.
	src := &infinite{}
	huge := ocispec.Descriptor{Digest: d.Digest, Size: 1 << 20}
	n, err := io.Copy(io.Discard, VerifyReader(src, huge))
	if !errors.Is(err, ErrSizeMismatch) || n != 1<<20 || src.n > 1<<20+1 {
		t.Fatalf("endless source: copied %d, read %d, err %v", n, src.n, err)
	}
	// Errors are sticky.
	r := VerifyReader(bytes.NewReader(bad), d)
	io.ReadAll(r)
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("second read after failure = %v", err)
	}
	if _, err := io.ReadAll(VerifyReader(bytes.NewReader(good), ocispec.Descriptor{Digest: "bogus", Size: 1})); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bogus digest: %v", err)
	}
}

func TestJSON(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Annotations: map[string]string{"a": "b"}}
	m.SchemaVersion = 2
	d, err := s.PutJSON(ctx, ocispec.MediaTypeImageManifest, m)
	if err != nil {
		t.Fatal(err)
	}
	var got ocispec.Manifest
	if err := s.GetJSON(ctx, d, &got); err != nil || got.Annotations["a"] != "b" {
		t.Fatalf("GetJSON = %+v, %v", got, err)
	}
	big := d
	big.Size = MaxJSONSize + 1
	if err := s.GetJSON(ctx, big, &got); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("GetJSON of an oversized descriptor = %v", err)
	}
	tamper(t, s, d.Digest, func(b []byte) []byte { return bytes.Replace(b, []byte(`"b"`), []byte(`"c"`), 1) })
	if err := s.GetJSON(ctx, d, &got); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("GetJSON of a tampered blob = %v", err)
	}
}

func TestWalk(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	want := map[digest.Digest]int64{}
	for i := range 5 {
		d := push(t, s, blocks.MediaTypeBlock, []byte(fmt.Sprint("blob", i, strings.Repeat("x", i))))
		want[d.Digest] = d.Size
	}
	// Stray files in blobs/ are not blobs.
	os.WriteFile(filepath.Join(s.Root(), "blobs", "sha256", "not-a-digest"), nil, 0o644)
	got := map[digest.Digest]int64{}
	if err := s.Walk(ctx, func(d digest.Digest, n int64) error { got[d] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Walk = %v, want %v", got, want)
	}
}

// index.json and the member and block records are read whole: each is
// bounded (docs/FORMAT.md section 9) and a larger one is refused.
func TestRecordAndIndexBounds(t *testing.T) {
	ctx := context.Background()
	s, err := Create(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	raw := digest.FromString("a block")
	rec := filepath.Join(s.Root(), membersDir, string(blocks.Gzip), raw.Encoded())
	os.MkdirAll(filepath.Dir(rec), 0o755)
	if err := os.WriteFile(rec, bytes.Repeat([]byte(" "), maxRecordSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	// The member index is a cache: an oversized record is not read, and
	// counts as no record.
	if _, found, err := s.LookupMember(ctx, raw, blocks.Gzip); found || err != nil {
		t.Fatalf("LookupMember of a %d-byte record = %v, %v, want not found", maxRecordSize+1, found, err)
	}
	if _, err := s.readRecord(filepath.ToSlash(filepath.Join(membersDir, string(blocks.Gzip), raw.Encoded()))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("reading a %d-byte record = %v, want ErrTooLarge", maxRecordSize+1, err)
	}
	f, err := os.OpenFile(filepath.Join(s.Root(), indexFile), os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(maxIndexSize + 1); err != nil { // sparse: costs no disk
		t.Fatal(err)
	}
	f.Close()
	if _, err := s.Tags(ctx); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Tags with a %d-byte index.json = %v, want ErrTooLarge", maxIndexSize+1, err)
	}
}
