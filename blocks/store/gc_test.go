package store

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/tree"
)

// fixture is a store laid out the way export and block add leave it, plus garbage.
type fixture struct {
	s                                *Store
	config, layer, layer2, blocked   ocispec.Descriptor
	member, empty                    ocispec.Descriptor
	stdManifest, stdManifest2        ocispec.Descriptor
	blockedManifest, blockset        ocispec.Descriptor
	stdIndex, imageIndex             ocispec.Descriptor
	treeDoc, file1, file2, rawBlock  ocispec.Descriptor
	garbage, garbageMember, otherTag ocispec.Descriptor
	staleTemp, freshTemp             string
}

func putJSON(t *testing.T, s *Store, mediaType string, v any) ocispec.Descriptor {
	t.Helper()
	d, err := s.PutJSON(context.Background(), mediaType, v)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func manifest(config ocispec.Descriptor, layers ...ocispec.Descriptor) ocispec.Manifest {
	return ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: layers}
}

func index(annotations map[string]string, m ...ocispec.Descriptor) ocispec.Index {
	return ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: m, Annotations: annotations}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	s := newStore(t)
	f := &fixture{s: s}
	f.config = push(t, s, ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux"}`))
	f.layer = push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("standard layer"))
	f.layer2 = push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("arm64 standard layer"))
	f.blocked = push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("blocked layer"))
	f.member = push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, []byte("live raw")))
	f.empty = push(t, s, ocispec.MediaTypeEmptyJSON, []byte("{}"))
	f.stdManifest = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(f.config, f.layer))
	f.stdManifest2 = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(f.config, f.layer2))
	f.blockedManifest = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(f.config, f.blocked))
	f.blockset = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(f.empty, f.member))
	// The standard index is reachable only through the annotation, and the
	// arm64 manifest only through the standard index.
	f.stdIndex = putJSON(t, s, ocispec.MediaTypeImageIndex, index(nil, f.stdManifest, f.stdManifest2))
	f.imageIndex = putJSON(t, s, ocispec.MediaTypeImageIndex, index(map[string]string{
		blocks.AnnotationStandard:          string(f.stdIndex.Digest),
		blocks.AnnotationStandardMediaType: f.stdIndex.MediaType,
		blocks.AnnotationStandardSize:      strconv.FormatInt(f.stdIndex.Size, 10),
	}, f.stdManifest, f.blockedManifest, f.blockset))
	if err := s.Tag(ctx, "app:v1", f.imageIndex); err != nil {
		t.Fatal(err)
	}
	// A tag written by another tool, pointing at a plain manifest.
	f.otherTag = putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(f.config))
	if err := s.Tag(ctx, "other", f.otherTag); err != nil {
		t.Fatal(err)
	}

	// What `block add` leaves: a raw block and a tree with two file blocks.
	f.rawBlock = push(t, s, blocks.MediaTypeBlock, []byte("raw block"))
	f.file1 = push(t, s, blocks.MediaTypeBlock, []byte("file one"))
	f.file2 = push(t, s, blocks.MediaTypeBlock, []byte("file two"))
	tr := &tree.Tree{Version: tree.Version, Entries: []tree.Entry{
		{Path: "a", Type: tree.TypeFile, Mode: "0644", Digest: f.file1.Digest, Size: f.file1.Size},
		{Path: "d", Type: tree.TypeDir, Mode: "0755"},
		{Path: "d/b", Type: tree.TypeFile, Mode: "0755", Digest: f.file2.Digest, Size: f.file2.Size},
	}}
	doc, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	f.treeDoc = push(t, s, blocks.MediaTypeTree, doc)
	for _, d := range []ocispec.Descriptor{f.rawBlock, f.treeDoc} {
		if err := s.RecordBlock(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	// Garbage: an unreferenced blob, an unreferenced member with a record,
	// and temp files, one stale.
	f.garbage = push(t, s, blocks.MediaTypeBlock, []byte("garbage"))
	f.garbageMember = push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, []byte("old raw")))
	if err := s.RecordMember(ctx, digest.FromString("old raw"), blocks.Gzip, f.garbageMember); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordMember(ctx, digest.FromString("live raw"), blocks.Gzip, f.member); err != nil {
		t.Fatal(err)
	}
	f.staleTemp = filepath.Join(s.Root(), "blockfile", "ingest", "blob-stale")
	f.freshTemp = filepath.Join(s.Root(), "blockfile", "ingest", "blob-fresh")
	os.WriteFile(f.staleTemp, []byte("half"), 0o644)
	os.WriteFile(f.freshTemp, []byte("in progress"), 0o644)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(f.staleTemp, old, old)
	return f
}

func (f *fixture) live() []ocispec.Descriptor {
	return []ocispec.Descriptor{f.config, f.layer, f.layer2, f.blocked, f.member, f.empty, f.stdManifest,
		f.stdManifest2, f.blockedManifest, f.blockset, f.stdIndex, f.imageIndex, f.otherTag,
		f.treeDoc, f.file1, f.file2, f.rawBlock}
}

func digests(ds []ocispec.Descriptor) []string {
	var out []string
	for _, d := range ds {
		out = append(out, string(d.Digest))
	}
	slices.Sort(out)
	return out
}

func present(t *testing.T, s *Store, d ocispec.Descriptor) bool {
	t.Helper()
	ok, err := s.Exists(context.Background(), d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestReachable(t *testing.T) {
	f := newFixture(t)
	got, err := f.s.Reachable(context.Background(), f.imageIndex)
	if err != nil {
		t.Fatal(err)
	}
	want := []ocispec.Descriptor{f.imageIndex, f.stdManifest, f.blockedManifest, f.blockset, f.stdIndex,
		f.stdManifest2, f.config, f.layer, f.layer2, f.blocked, f.empty, f.member}
	var gotDs []ocispec.Descriptor
	for _, d := range got {
		gotDs = append(gotDs, d)
	}
	if g, w := digests(gotDs), digests(want); !slices.Equal(g, w) {
		t.Fatalf("Reachable = %v\nwant %v", g, w)
	}
	kids, err := f.s.Children(context.Background(), f.treeDoc)
	if err != nil || !slices.Equal(digests(kids), digests([]ocispec.Descriptor{f.file1, f.file2})) {
		t.Fatalf("Children(tree) = %v, %v", kids, err)
	}
}

func TestGCDryRunRemovesNothing(t *testing.T) {
	f := newFixture(t)
	res, err := f.s.GCWithOptions(context.Background(), GCOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := digests(res.Removed), digests([]ocispec.Descriptor{f.garbage, f.garbageMember}); !slices.Equal(g, w) {
		t.Fatalf("dry run would remove %v, want %v", g, w)
	}
	if res.BytesFreed != f.garbage.Size+f.garbageMember.Size {
		t.Errorf("BytesFreed = %d", res.BytesFreed)
	}
	if !present(t, f.s, f.garbage) || !exists(f.staleTemp) || len(res.TempFiles) != 1 || len(res.MemberRecords) != 1 {
		t.Fatalf("dry run: garbage present %v, stale temp present %v, result %+v", present(t, f.s, f.garbage), exists(f.staleTemp), res)
	}
}

func TestGCKeepsReachableRemovesRest(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	removed, err := f.s.GC(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := digests(removed), digests([]ocispec.Descriptor{f.garbage, f.garbageMember}); !slices.Equal(g, w) {
		t.Fatalf("GC removed %v, want %v", g, w)
	}
	for _, d := range f.live() {
		if !present(t, f.s, d) {
			t.Errorf("GC removed live blob %s (%s)", d.Digest, d.MediaType)
		}
	}
	if present(t, f.s, f.garbage) || present(t, f.s, f.garbageMember) {
		t.Error("garbage survived GC")
	}
	if exists(f.staleTemp) || !exists(f.freshTemp) {
		t.Errorf("temp files: stale present %v (want false), fresh present %v (want true)", exists(f.staleTemp), exists(f.freshTemp))
	}
	if _, ok, _ := f.s.LookupMember(ctx, digest.FromString("live raw"), blocks.Gzip); !ok {
		t.Error("GC dropped the record of a live member")
	}
	if exists(f.s.path("blockfile/members/gzip/" + digest.FromString("old raw").Encoded())) {
		t.Error("GC kept the record of a removed member")
	}
	os.Remove(f.freshTemp)
	if err := f.s.Verify(ctx, nil); err != nil {
		t.Fatalf("Verify after GC = %v", err)
	}
	// A second GC has nothing to do.
	if removed, err := f.s.GC(ctx, false); err != nil || len(removed) != 0 {
		t.Fatalf("second GC = %v, %v", removed, err)
	}
}

func TestGCDropBlocks(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	res, err := f.s.GCWithOptions(ctx, GCOptions{DropBlocks: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []ocispec.Descriptor{f.garbage, f.garbageMember, f.rawBlock, f.treeDoc, f.file1, f.file2}
	if g, w := digests(res.Removed), digests(want); !slices.Equal(g, w) {
		t.Fatalf("GC --blocks removed %v, want %v", g, w)
	}
	if rec, _ := f.s.RecordedBlocks(ctx); len(rec) != 0 || len(res.BlockRecords) != 2 {
		t.Fatalf("records left %v, dropped %v", rec, res.BlockRecords)
	}
	if !present(t, f.s, f.imageIndex) || !present(t, f.s, f.stdManifest2) {
		t.Fatal("GC --blocks removed image blobs")
	}
}

// GC must not sweep when it cannot read a node: the node's children would go.
func TestGCFailsClosedOnMissingManifest(t *testing.T) {
	f := newFixture(t)
	os.Remove(f.s.BlobPath(f.blockset.Digest))
	removed, err := f.s.GC(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), string(f.blockset.Digest)) {
		t.Fatalf("GC = %v, %v; want an error naming %s", removed, err, f.blockset.Digest)
	}
	if !present(t, f.s, f.member) || !present(t, f.s, f.garbage) {
		t.Fatal("GC removed blobs although it failed")
	}
}

func collect(t *testing.T, s *Store) ([]Problem, error) {
	t.Helper()
	var ps []Problem
	err := s.Verify(context.Background(), func(p Problem) { ps = append(ps, p) })
	return ps, err
}

func TestVerify(t *testing.T) {
	f := newFixture(t)
	if ps, err := collect(t, f.s); err != nil || len(ps) != 0 {
		t.Fatalf("Verify on a good store = %v, %v", ps, err)
	}

	// A flipped byte in a layer, a missing member, a missing tree file.
	tamper(t, f.s, f.layer.Digest, func(b []byte) []byte { b[0] ^= 0x80; return b })
	os.Remove(f.s.BlobPath(f.member.Digest))
	os.Remove(f.s.BlobPath(f.file2.Digest))
	ps, err := collect(t, f.s)
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("Verify = %v, want ErrProblems", err)
	}
	byDigest := map[digest.Digest]Problem{}
	for _, p := range ps {
		byDigest[p.Digest] = p
	}
	if len(ps) != 3 {
		t.Errorf("%d problems, want 3: %v", len(ps), ps)
	}
	if p := byDigest[f.layer.Digest]; p.Kind != ProblemCorrupt || p.Path != f.s.BlobPath(f.layer.Digest) {
		t.Errorf("flipped byte: %+v", p)
	}
	if p := byDigest[f.member.Digest]; p.Kind != ProblemMissing || p.Ref != string(f.blockset.Digest) {
		t.Errorf("missing member: %+v", p)
	}
	if p := byDigest[f.file2.Digest]; p.Kind != ProblemMissing || p.Ref != string(f.treeDoc.Digest) {
		t.Errorf("missing tree file: %+v", p)
	}
}

func TestVerifyMissingRecordedBlock(t *testing.T) {
	f := newFixture(t)
	os.Remove(f.s.BlobPath(f.rawBlock.Digest))
	ps, err := collect(t, f.s)
	if !errors.Is(err, ErrProblems) || len(ps) != 1 || ps[0].Kind != ProblemMissing ||
		ps[0].Digest != f.rawBlock.Digest || !strings.Contains(ps[0].Ref, "blockfile/blocks/"+f.rawBlock.Digest.Encoded()) {
		t.Fatalf("Verify = %v, %+v", err, ps)
	}
}

func TestVerifyReportsBadDocuments(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	notJSON := push(t, s, ocispec.MediaTypeImageManifest, []byte("not json"))
	if err := s.Tag(ctx, "broken", notJSON); err != nil {
		t.Fatal(err)
	}
	// A manifest that declares the wrong size for its layer.
	layer := push(t, s, ocispec.MediaTypeImageLayerGzip, []byte("layer"))
	wrong := layer
	wrong.Size++
	config := push(t, s, ocispec.MediaTypeImageConfig, []byte("{}"))
	m := putJSON(t, s, ocispec.MediaTypeImageManifest, manifest(config, wrong))
	if err := s.Tag(ctx, "wrong-size", m); err != nil {
		t.Fatal(err)
	}
	ps, err := collect(t, s)
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("Verify = %v", err)
	}
	kinds := map[string]bool{}
	for _, p := range ps {
		kinds[p.Kind] = true
	}
	if !kinds[ProblemBadDocument] || !kinds[ProblemSize] {
		t.Fatalf("problems %v, want bad-document and size", ps)
	}
	b, _ := json.Marshal(ps[0])
	if !strings.Contains(string(b), `"kind"`) {
		t.Fatalf("Problem JSON = %s", b)
	}
}
