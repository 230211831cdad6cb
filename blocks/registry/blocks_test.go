package registry

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/blocks/tree"
)

// blockRegistry serves an in-memory registry and counts blob uploads.
func blockRegistry(t *testing.T) (host string, uploads *atomic.Int64) {
	t.Helper()
	uploads = new(atomic.Int64)
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/") {
			uploads.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), uploads
}

func addBlock(t *testing.T, s *store.Store, data string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	d, err := s.Ingest(ctx, blocks.MediaTypeBlock, strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordBlock(ctx, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func remoteFor(t *testing.T, host string) (name.Repository, []remote.Option) {
	t.Helper()
	ref, opts, err := transport.Registry{HostsDir: t.TempDir()}.Remote(context.Background(), host+"/team/blocks:"+DefaultBlockTag)
	if err != nil {
		t.Fatal(err)
	}
	return ref.Context(), opts
}

// checkServed fetches every block from the repository and compares digests.
func checkServed(t *testing.T, repo name.Repository, opts []remote.Option, want []ocispec.Descriptor) {
	t.Helper()
	for _, d := range want {
		l, err := remote.Layer(repo.Digest(d.Digest.String()), opts...)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("block %s: %v", d.Digest, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || digest.FromBytes(b) != d.Digest {
			t.Fatalf("block %s: served %d bytes hashing to %s (%v)", d.Digest, len(b), digest.FromBytes(b), err)
		}
	}
}

func TestPushBlocksShardsMergesAndSkips(t *testing.T) {
	ctx := context.Background()
	s, err := store.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var first []ocispec.Descriptor
	for i := range 4 {
		first = append(first, addBlock(t, s, fmt.Sprintf("block %d %s", i, strings.Repeat("x", i*1000))))
	}
	// A tree block brings its file blocks.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.jar"), []byte("jar a"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.jar"), []byte("jar b"), 0o644)
	doc, tr, err := tree.Build(ctx, dir, func(ctx context.Context, p string) (blocks.Ref, error) {
		f, err := os.Open(p)
		if err != nil {
			return blocks.Ref{}, err
		}
		defer f.Close()
		d, err := s.Ingest(ctx, blocks.MediaTypeBlock, f)
		return blocks.Ref{Digest: d.Digest, Size: d.Size}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	treeDesc := tree.DocRef(doc).Descriptor(blocks.MediaTypeTree)
	if err := s.Push(ctx, treeDesc, bytes.NewReader(doc)); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordBlock(ctx, treeDesc); err != nil {
		t.Fatal(err)
	}
	first = append(first, treeDesc)
	for _, e := range tr.Entries {
		first = append(first, ocispec.Descriptor{MediaType: blocks.MediaTypeBlock, Digest: e.Digest, Size: e.Size})
	}

	host, uploads := blockRegistry(t)
	repo, opts := remoteFor(t, host)
	descs, missing, err := BlocksToPush(ctx, s, nil)
	if err != nil || len(missing) != 0 {
		t.Fatal(err, missing)
	}
	if len(descs) != len(first) {
		t.Fatalf("BlocksToPush: %d blocks, want %d (4 files, a tree, its 2 files)", len(descs), len(first))
	}
	res, err := PushBlocks(ctx, s, repo, opts, descs, BlockPushOptions{BlocksPerManifest: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded.Blobs != len(first) || res.Blocks != len(first) || len(res.Manifests) != 3 {
		t.Fatalf("first push: %+v; want %d uploaded in 3 manifests", res, len(first))
	}
	checkServed(t, repo, opts, first)

	// A second run with two new blocks sends only those, and the tag keeps all.
	more := []ocispec.Descriptor{addBlock(t, s, "new one"), addBlock(t, s, "new two")}
	uploads.Store(0)
	descs, _, err = BlocksToPush(ctx, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err = PushBlocks(ctx, s, repo, opts, descs, BlockPushOptions{BlocksPerManifest: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded.Blobs != 2 || uploads.Load() != 2 || res.Present.Blobs != len(first) || res.Added != 2 {
		t.Fatalf("second push: %+v, %d upload sessions; want exactly the 2 new blocks sent", res, uploads.Load())
	}

	// Pushing one named block keeps the others under the tag.
	res, err = PushBlocks(ctx, s, repo, opts, more[:1], BlockPushOptions{BlocksPerManifest: 3})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := remote.NewPuller(opts...)
	kept, err := readBlockManifests(ctx, p, repo, DefaultBlockTag)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != len(first)+2 || res.Blocks != len(kept) {
		t.Fatalf("after a partial push the tag keeps %d blocks (result %d), want %d", len(kept), res.Blocks, len(first)+2)
	}
	checkServed(t, repo, opts, append(first, more...))
}

func TestPushBlocksRefusesForeignTag(t *testing.T) {
	ctx := context.Background()
	s, err := store.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := addBlock(t, s, "data")
	host, _ := blockRegistry(t)
	repo, opts := remoteFor(t, host)
	// An ordinary image manifest under the tag.
	cfg := ocispec.DescriptorEmptyJSON
	if err := remote.WriteLayer(repo, &storeLayer{desc: cfg, open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("{}")), nil }}, opts...); err != nil {
		t.Fatal(err)
	}
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[]}`, ocispec.MediaTypeImageManifest, cfg.MediaType, cfg.Digest)
	if err := remote.Put(repo.Tag(DefaultBlockTag), rawManifest(m), opts...); err != nil {
		t.Fatal(err)
	}
	if _, err := PushBlocks(ctx, s, repo, opts, []ocispec.Descriptor{d}, BlockPushOptions{}); err == nil || !strings.Contains(err.Error(), "not a block manifest") {
		t.Fatalf("push over an image tag: got %v, want a refusal", err)
	}
}

func TestBlocksToPushNamedAndMissing(t *testing.T) {
	ctx := context.Background()
	s, err := store.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := addBlock(t, s, "named")
	got, _, err := BlocksToPush(ctx, s, []digest.Digest{d.Digest})
	if err != nil || len(got) != 1 || got[0].Digest != d.Digest || got[0].Size != d.Size {
		t.Fatalf("named block: %v %v", got, err)
	}
	absent := digest.FromString("absent")
	if _, _, err := BlocksToPush(ctx, s, []digest.Digest{absent}); err == nil || !strings.Contains(err.Error(), absent.String()) {
		t.Fatalf("absent block: got %v", err)
	}
	// A recorded block whose blob is gone is reported and skipped.
	gone := addBlock(t, s, "gone")
	if err := os.Remove(s.BlobPath(gone.Digest)); err != nil {
		t.Fatal(err)
	}
	got, missing, err := BlocksToPush(ctx, s, nil)
	if err != nil || len(got) != 1 || len(missing) != 1 || missing[0] != gone.Digest {
		t.Fatalf("missing blob: got %v, missing %v, %v", got, missing, err)
	}
}

// FuzzParseBlockManifest: whatever a registry serves as a block manifest is
// either refused or gives valid sha256 block descriptors.
func FuzzParseBlockManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.blockfile.blocks.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.blockfile.block.v1","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}`))
	f.Add([]byte(`{"layers":[{"digest":"sha256:zz","size":-1}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseBlockManifest(b, digest.FromBytes(b))
		if err != nil {
			return
		}
		for _, l := range m.Layers {
			if l.Digest.Validate() != nil || l.Size < 0 {
				t.Fatalf("accepted %v", l)
			}
		}
		if _, err := parseBlockManifest(b, digest.FromString("other")); err == nil {
			t.Fatal("accepted bytes whose digest differs from the registry's")
		}
	})
}
