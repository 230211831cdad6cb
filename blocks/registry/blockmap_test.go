package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

func TestBlockMapEncoding(t *testing.T) {
	std := digest.FromString("layer")
	m1, b1 := digest.FromString("m1"), digest.FromString("b1")
	m2, b2 := digest.FromString("m2"), digest.FromString("b2")
	data, err := encodeBlockMap(std, map[digest.Digest]digest.Digest{m1: b1, m2: b2})
	if err != nil {
		t.Fatal(err)
	}
	again, err := encodeBlockMap(std, map[digest.Digest]digest.Digest{m2: b2, m1: b1})
	if err != nil || !bytes.Equal(data, again) {
		t.Fatalf("the same map encodes two ways:\n%s\n%s", data, again)
	}
	got, err := parseBlockMap(data, std)
	if err != nil || len(got) != 2 || got[m1] != b1 || got[m2] != b2 {
		t.Fatalf("parse: %v, %v", got, err)
	}
	if _, err := parseBlockMap(data, digest.FromString("other")); err == nil {
		t.Error("a map of another layer accepted")
	}
	var doc blockMapDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func([]byte) []byte{
		"whitespace": func(b []byte) []byte { return append(b, ' ') },
		"version 2": func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"blockfile.blockmap":1`), []byte(`"blockfile.blockmap":2`), 1)
		},
		"unknown key": func(b []byte) []byte { return bytes.Replace(b, []byte(`{"m"`), []byte(`{"x":1,"m"`), 1) },
		"unsorted": func([]byte) []byte {
			d := doc
			d.Blocks = []blockMapEntry{doc.Blocks[1], doc.Blocks[0]}
			b, _ := json.Marshal(d)
			return b
		},
		"repeated": func([]byte) []byte {
			d := doc
			d.Blocks = []blockMapEntry{doc.Blocks[0], doc.Blocks[0]}
			b, _ := json.Marshal(d)
			return b
		},
		"not sha256": func(b []byte) []byte { return bytes.Replace(b, []byte(b1.String()), []byte("md5:00"), 1) },
		"too large":  func(b []byte) []byte { return append(b, make([]byte, maxBlockMapLayer)...) },
	} {
		if _, err := parseBlockMap(edit(bytes.Clone(data)), std); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBlockMapManifest(t *testing.T) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString("index"), Size: 100}
	std := digest.FromString("layer")
	l := ocispec.Descriptor{MediaType: blocks.MediaTypeBlockMap, Digest: digest.FromString("map"), Size: 300,
		Annotations: map[string]string{blocks.AnnotationBlockMapLayer: std.String()}}
	data, err := makeBlockMapManifest(subject, []ocispec.Descriptor{l})
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseBlockMapManifest(data, subject.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.layers[std]; got.Digest != l.Digest || got.Size != l.Size || m.desc.Digest != digest.FromBytes(data) {
		t.Fatalf("parsed %+v", m)
	}
	if _, err := parseBlockMapManifest(data, digest.FromString("other")); err == nil {
		t.Error("a block map of another index accepted")
	}
	for name, layers := range map[string][]ocispec.Descriptor{
		"two maps of a layer": {l, l},
		"other media type":    {{MediaType: "application/json", Digest: l.Digest, Size: l.Size, Annotations: l.Annotations}},
		"no layer annotation": {{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size}},
		"too large":           {{MediaType: l.MediaType, Digest: l.Digest, Size: maxBlockMapLayer + 1, Annotations: l.Annotations}},
	} {
		data, err := makeBlockMapManifest(subject, layers)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseBlockMapManifest(data, subject.Digest); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A listing tells a block map by its artifactType or its annotation,
	// and never hands it to the store as a signature or attestation.
	for _, d := range []ocispec.Descriptor{
		{ArtifactType: blocks.ArtifactTypeBlockMap},
		{ArtifactType: ocispec.MediaTypeEmptyJSON, Annotations: map[string]string{blocks.AnnotationBlockMap: "1"}},
	} {
		if !transport.IsBlockMap(d) || !transport.IsTransport(d) {
			t.Errorf("%+v: not a block map", d)
		}
	}
}

func FuzzParseBlockMap(f *testing.F) {
	std := digest.FromString("layer")
	data, err := encodeBlockMap(std, map[digest.Digest]digest.Digest{digest.FromString("m"): digest.FromString("b")})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"blockfile.blockmap":1,"layer":"` + std.String() + `","blocks":[]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := parseBlockMap(in, std)
		if err != nil {
			return
		}
		// Accepted: the canonical encoding of what it holds.
		again, err := encodeBlockMap(std, m)
		if err != nil || !bytes.Equal(again, in) {
			t.Fatalf("accepted a map that does not re-encode to itself:\n%q\n%q", in, again)
		}
	})
}

func FuzzParseBlockMapManifest(f *testing.F) {
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString("index"), Size: 100}
	data, err := makeBlockMapManifest(subject, []ocispec.Descriptor{{MediaType: blocks.MediaTypeBlockMap, Digest: digest.FromString("map"), Size: 300,
		Annotations: map[string]string{blocks.AnnotationBlockMapLayer: digest.FromString("layer").String()}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := parseBlockMapManifest(in, subject.Digest)
		if err != nil {
			return
		}
		for std, l := range m.layers {
			if std.Validate() != nil || l.Digest.Validate() != nil || l.Size <= 0 || l.Size > maxBlockMapLayer || l.MediaType != blocks.MediaTypeBlockMap {
				t.Fatalf("accepted layer %s -> %+v", std, l)
			}
		}
	})
}

// TestBlockMapPull: push publishes the image's block map beside the index
// (again: found, not pushed twice); a first pull that reads a layer whole
// dehydrates it through the map to the registry's blocked layer and keeps
// no block map as a referrer. Without the map, with a map blob the
// registry serves damaged, or with a map that names wrong raw blocks, the
// pull still yields the exact image: by inflating the blocks, or by reading
// the blocked layer. A registry that refuses the map does not fail the push.
func TestBlockMapPull(t *testing.T) {
	rig := newRig(t, true)
	ctx := context.Background()
	var known []int // per dehydrate call, the entries of its block map
	defer func(f func(context.Context, io.ReaderAt, int64, io.Writer, layer.DehydrateOptions) ([]layer.Part, error)) {
		dehydrate = f
	}(dehydrate)
	dehydrate = func(ctx context.Context, r io.ReaderAt, n int64, w io.Writer, opts layer.DehydrateOptions) ([]layer.Part, error) {
		known = append(known, len(opts.Known))
		return layer.Dehydrate(ctx, r, n, w, opts)
	}
	idx, err := rig.src.Resolve(ctx, "app:1")
	if err != nil {
		t.Fatal(err)
	}
	res1, err := image.Resolve(ctx, rig.src, "app:1")
	if err != nil {
		t.Fatal(err)
	}
	members := len(res1.Manifests[0].Layers[0].Members)
	pull := func(t *testing.T, repo string, opts PullOptions) *PullResult {
		t.Helper()
		known = nil
		s, err := store.Create(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		eps, err := transport.Registry{}.PullEndpoints(ctx, rig.host+"/"+repo+":1")
		if err != nil {
			t.Fatal(err)
		}
		opts.Remote, opts.HTTP = eps[0].Options, eps[0].HTTP
		res, err := Pull(ctx, s, eps[0].Ref, "app:1", opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Standard.Digest != rig.std["1"].Digest || res.Index.Digest != idx.Digest || res.Dehydrated != 1 {
			t.Fatalf("standard %s (want %s), index %s (want %s), %d layers read whole (want 1)", res.Standard.Digest, rig.std["1"].Digest, res.Index.Digest, idx.Digest, res.Dehydrated)
		}
		if err := s.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if refs, err := s.Referrers(ctx, idx.Digest); err != nil || len(refs) != 0 {
			t.Fatalf("the store keeps %d referrers of the index (%v), want none: a block map is transport", len(refs), err)
		}
		return res
	}
	t.Run("pushed once", func(t *testing.T) {
		ref, err := name.ParseReference(rig.host + "/app:1")
		if err != nil {
			t.Fatal(err)
		}
		pr, err := Push(ctx, rig.src, "app:1", ref, PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pr.BlockMap == nil {
			t.Fatal("push of an image with a gzip layer with blocks: no block map")
		}
		eps, err := transport.Registry{}.PullEndpoints(ctx, rig.host+"/app:1")
		if err != nil {
			t.Fatal(err)
		}
		listed, err := transport.ListTransport(ctx, eps[0].Ref.Context(), eps[0].Options, idx.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if len(listed) != 1 || listed[0].Digest != pr.BlockMap.Digest {
			t.Fatalf("after two pushes the index lists %+v, want the one block map %s", listed, pr.BlockMap.Digest)
		}
	})
	t.Run("used", func(t *testing.T) {
		res := pull(t, "app", PullOptions{})
		if res.BlockMap == nil || res.Derived != 1 || len(known) != 1 || known[0] != members {
			t.Fatalf("block map %v, %d derived (want 1), block maps of %v entries given to dehydrate (want [%d])", res.BlockMap, res.Derived, known, members)
		}
	})
	t.Run("not asked for", func(t *testing.T) {
		res := pull(t, "app", PullOptions{NoBlockMap: true})
		if res.BlockMap != nil || res.Derived != 1 || len(known) != 1 || known[0] != 0 {
			t.Fatalf("block map %v, %d derived (want 1), maps %v (want [0])", res.BlockMap, res.Derived, known)
		}
	})
	t.Run("damaged blob", func(t *testing.T) {
		rig.edit = func(w http.ResponseWriter, r *http.Request, h http.Handler) bool {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
				return false
			}
			respond(w, r, h, func(hdr http.Header, body []byte) (int, []byte) {
				if bytes.HasPrefix(body, []byte(`{"blockfile.blockmap"`)) {
					body = bytes.Clone(body)
					body[len(body)-3] ^= 1
				}
				return http.StatusOK, body
			})
			return true
		}
		defer func() { rig.edit = nil }()
		res := pull(t, "app", PullOptions{})
		if res.BlockMap != nil || res.Derived != 1 || len(known) != 1 || known[0] != 0 {
			t.Fatalf("block map %v, %d derived (want 1), maps %v (want [0]: the damaged map not used)", res.BlockMap, res.Derived, known)
		}
	})
	t.Run("refused by the registry", func(t *testing.T) {
		// A registry that refuses the block map: the push still succeeds
		// (the image is complete), without one; pulls inflate.
		rig.edit = func(w http.ResponseWriter, r *http.Request, h http.Handler) bool {
			if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				t.Error(err)
			}
			if bytes.Contains(body, []byte(blocks.ArtifactTypeBlockMap)) {
				http.Error(w, `{"errors":[{"code":"MANIFEST_INVALID","message":"artifact type not allowed"}]}`, http.StatusBadRequest)
				return true
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			return false
		}
		defer func() { rig.edit = nil }()
		ref, err := name.ParseReference(rig.host + "/refused:1")
		if err != nil {
			t.Fatal(err)
		}
		pr, err := Push(ctx, rig.src, "app:1", ref, PushOptions{})
		if err != nil || pr.BlockMap != nil || len(pr.Warnings) != 1 || !strings.Contains(pr.Warnings[0], "block map not pushed") {
			t.Fatalf("push: %+v, %v; want the image pushed without a block map, and a warning", pr, err)
		}
		rig.edit = nil
		res := pull(t, "refused", PullOptions{})
		if res.BlockMap != nil || res.Derived != 1 || len(known) != 1 || known[0] != 0 {
			t.Fatalf("block map %v, %d derived (want 1), maps %v (want [0])", res.BlockMap, res.Derived, known)
		}
	})
	t.Run("wrong raw blocks", func(t *testing.T) {
		// The image in another repository without its block map, then a
		// map that swaps two raw blocks: well formed, but not the stubs'.
		ref, err := name.ParseReference(rig.host + "/wrong:1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Push(ctx, rig.src, "app:1", ref, PushOptions{NoBlockMap: true}); err != nil {
			t.Fatal(err)
		}
		docs, err := storeBlockMaps(ctx, rig.src, idx)
		if err != nil || len(docs) != 1 {
			t.Fatalf("%d block maps, %v", len(docs), err)
		}
		for std, data := range docs {
			m, err := parseBlockMap(data, std)
			if err != nil {
				t.Fatal(err)
			}
			var ms []digest.Digest
			for k := range m {
				ms = append(ms, k)
			}
			m[ms[0]], m[ms[1]] = m[ms[1]], m[ms[0]]
			if docs[std], err = encodeBlockMap(std, m); err != nil {
				t.Fatal(err)
			}
		}
		r, err := newRepo(ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := &pusher{s: rig.src, r: r}
		if _, err := p.putBlockMap(ctx, idx, docs, nil); err != nil {
			t.Fatal(err)
		}
		res := pull(t, "wrong", PullOptions{})
		if res.BlockMap == nil || res.Derived != 0 || len(known) != 1 || known[0] != members {
			t.Fatalf("block map %v, %d derived (want 0: the blocked layer read from the registry), maps %v", res.BlockMap, res.Derived, known)
		}
	})
}
