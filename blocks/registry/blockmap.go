package registry

// Block maps (docs/FORMAT.md section 8d): for each gzip standard layer with
// blocks, the raw block each of its block members holds, published beside
// the image as an OCI 1.1 referrer of its index.
//
// Why: a first pull reads a layer of small files with blocks among them
// (an OS layer) whole and derives its blocked layer from it
// (layer.Dehydrate). Each stub names its raw block, which nothing in the
// standard layer or the block set gives but the member's bytes inflated:
// for the bench image's system layer, 0.45 s of CPU, a third of the pull's.
// With the map, Dehydrate hashes the members (which the store does anyway)
// instead. The map is the publisher's word exactly as the stubs of a
// blocked layer read from the registry are, and what it yields is checked
// the same way: the derived blocked layer must have the blocked layer's
// digest, else the pull reads that layer from the registry.
//
// Like delta manifests, a block map never changes the image index (its
// digest and signatures stay valid, and images pushed before block maps
// existed get one when pushed again), old clients never see it, and a
// store never keeps it as a referrer: it is transport. It costs nothing in
// bundles or upgrades (a store that holds the members has no use for it).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

const (
	// maxBlockMapManifest bounds a block map manifest read from a registry
	// (about 250 bytes per layer with blocks).
	maxBlockMapManifest = 256 << 10
	// maxBlockMapLayer bounds one layer's block map (about 150 bytes per
	// block member; Dehydrate holds at most 131072 members).
	maxBlockMapLayer = 24 << 20
	// maxBlockMapCandidates bounds the block map manifests one pull reads.
	maxBlockMapCandidates = 4
)

// blockMapDoc is one layer's block map, the content of a blob of media
// type blocks.MediaTypeBlockMap. Its encoding is canonical: json.Marshal
// of this struct, entries sorted by member digest, each member once.
type blockMapDoc struct {
	Version int             `json:"blockfile.blockmap"`
	Layer   digest.Digest   `json:"layer"`
	Blocks  []blockMapEntry `json:"blocks"`
}

type blockMapEntry struct {
	Member digest.Digest `json:"m"`
	Block  digest.Digest `json:"b"`
}

// encodeBlockMap is the block map of the standard layer std: known maps
// each block member to its raw block.
func encodeBlockMap(std digest.Digest, known map[digest.Digest]digest.Digest) ([]byte, error) {
	doc := blockMapDoc{Version: 1, Layer: std, Blocks: make([]blockMapEntry, 0, len(known))}
	for m, b := range known {
		doc.Blocks = append(doc.Blocks, blockMapEntry{Member: m, Block: b})
	}
	slices.SortFunc(doc.Blocks, func(a, b blockMapEntry) int { return strings.Compare(string(a.Member), string(b.Member)) })
	return json.Marshal(doc)
}

// parseBlockMap checks that data is the canonical block map of the
// standard layer std and returns it (member -> raw block). data comes from
// a registry: nothing in it is trusted beyond the form.
func parseBlockMap(data []byte, std digest.Digest) (map[digest.Digest]digest.Digest, error) {
	if len(data) > maxBlockMapLayer {
		return nil, fmt.Errorf("block map of %d bytes, over the limit of %d", len(data), maxBlockMapLayer)
	}
	var doc blockMapDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("block map: %w", err)
	}
	if doc.Version != 1 {
		return nil, fmt.Errorf("block map: version %d, want 1", doc.Version)
	}
	if doc.Layer != std {
		return nil, fmt.Errorf("block map of layer %q, want %s", doc.Layer, std)
	}
	out := make(map[digest.Digest]digest.Digest, len(doc.Blocks))
	for i, e := range doc.Blocks {
		for _, d := range []digest.Digest{e.Member, e.Block} {
			if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
				return nil, fmt.Errorf("block map: entry %d: %q is not a sha256 digest", i, d)
			}
		}
		if i > 0 && doc.Blocks[i-1].Member >= e.Member {
			return nil, fmt.Errorf("block map: entry %d: members not sorted or repeated (%s)", i, e.Member)
		}
		out[e.Member] = e.Block
	}
	// One map has one encoding (no whitespace, no other key order).
	if again, err := json.Marshal(doc); err != nil || !bytes.Equal(again, data) {
		return nil, fmt.Errorf("block map: not in canonical form")
	}
	return out, nil
}

// makeBlockMapManifest is the block map manifest of the image index
// subject: layers are the block map blobs, each annotated with its
// standard layer. The same maps give the same bytes (pushing again is
// idempotent).
func makeBlockMapManifest(subject ocispec.Descriptor, layers []ocispec.Descriptor) ([]byte, error) {
	return makeTransportManifest(blocks.ArtifactTypeBlockMap, subject, layers, map[string]string{blocks.AnnotationBlockMap: "1"})
}

// blockMapManifest is a block map manifest, checked.
type blockMapManifest struct {
	desc   ocispec.Descriptor
	layers map[digest.Digest]ocispec.Descriptor // standard layer -> its map blob
}

// parseBlockMapManifest checks that data is a block map manifest of the
// image index subject (docs/FORMAT.md section 8d).
func parseBlockMapManifest(data []byte, subject digest.Digest) (*blockMapManifest, error) {
	m, err := parseTransportManifest(data, subject, blocks.ArtifactTypeBlockMap, "block map manifest", maxBlockMapManifest)
	if err != nil {
		return nil, err
	}
	out := &blockMapManifest{
		desc:   ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data))},
		layers: map[digest.Digest]ocispec.Descriptor{},
	}
	for i, l := range m.Layers {
		std := digest.Digest(l.Annotations[blocks.AnnotationBlockMapLayer])
		switch {
		case l.MediaType != blocks.MediaTypeBlockMap:
			return nil, fmt.Errorf("block map manifest: layer %d: media type %q, want %s", i, l.MediaType, blocks.MediaTypeBlockMap)
		case l.Digest.Validate() != nil || l.Digest.Algorithm() != digest.SHA256:
			return nil, fmt.Errorf("block map manifest: layer %d: digest %q is not a sha256 digest", i, l.Digest)
		case l.Size <= 0 || l.Size > maxBlockMapLayer:
			return nil, fmt.Errorf("block map manifest: layer %d: size %d (limit %d)", i, l.Size, maxBlockMapLayer)
		case std.Validate() != nil || std.Algorithm() != digest.SHA256:
			return nil, fmt.Errorf("block map manifest: layer %d: annotation %s = %q is not a sha256 digest", i, blocks.AnnotationBlockMapLayer, std)
		}
		if _, dup := out.layers[std]; dup {
			return nil, fmt.Errorf("block map manifest: two maps of layer %s", std)
		}
		out.layers[std] = ocispec.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size}
	}
	return out, nil
}

// storeBlockMaps reads the block maps of the image index idx from the
// store: for each gzip standard layer with blocks (those Dehydrate
// reads), its blocked layer's stubs.
func storeBlockMaps(ctx context.Context, s *store.Store, idx ocispec.Descriptor) (map[digest.Digest][]byte, error) {
	pairs, err := layerPairs(ctx, s, idx)
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest][]byte{}
	for _, p := range pairs {
		if !strings.Contains(p.std.MediaType, "gzip") {
			continue
		}
		rc, err := s.Fetch(ctx, p.blocked)
		if err != nil {
			return nil, err
		}
		stubs, err := layer.ReadStubs(ctx, rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("blocked layer %s: %w", p.blocked.Digest, err)
		}
		known := map[digest.Digest]digest.Digest{}
		for _, e := range stubs {
			known[e.Stub.Member.Digest] = e.Stub.Block.Digest
		}
		if len(known) == 0 {
			continue
		}
		data, err := encodeBlockMap(p.std.Digest, known)
		if err != nil {
			return nil, err
		}
		if len(data) > maxBlockMapLayer {
			continue // a pull would refuse it: that layer inflates instead
		}
		out[p.std.Digest] = data
	}
	return out, nil
}

// pushBlockMap publishes the block map of the image index idx (after the
// index, so the subject exists), unless the registry lists one already
// (listed: the index's transport referrers) or the image has no gzip layer
// with blocks. It returns the block map manifest, or nil.
func (p *pusher) pushBlockMap(ctx context.Context, idx ocispec.Descriptor, listed []ocispec.Descriptor) (*ocispec.Descriptor, error) {
	docs, err := storeBlockMaps(ctx, p.s, idx)
	if err != nil || len(docs) == 0 {
		return nil, err
	}
	return p.putBlockMap(ctx, idx, docs, listed)
}

// putBlockMap pushes the block map of idx made of docs (standard layer ->
// its encoded map), unless listed holds it.
func (p *pusher) putBlockMap(ctx context.Context, idx ocispec.Descriptor, docs map[digest.Digest][]byte, listed []ocispec.Descriptor) (*ocispec.Descriptor, error) {
	var layers []ocispec.Descriptor
	for _, std := range slices.Sorted(maps.Keys(docs)) {
		data := docs[std]
		desc := ocispec.Descriptor{MediaType: blocks.MediaTypeBlockMap, Digest: digest.FromBytes(data), Size: int64(len(data)),
			Annotations: map[string]string{blocks.AnnotationBlockMapLayer: std.String()}}
		layers = append(layers, desc)
	}
	data, err := makeBlockMapManifest(idx, layers)
	if err != nil {
		return nil, err
	}
	mdesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data))}
	for _, l := range listed {
		if l.Digest == mdesc.Digest {
			return &mdesc, nil // pushed before
		}
	}
	for _, l := range layers {
		std := digest.Digest(l.Annotations[blocks.AnnotationBlockMapLayer])
		if err := p.r.pusher.Upload(ctx, p.r.repo, static.NewLayer(docs[std], types.MediaType(blocks.MediaTypeBlockMap))); err != nil {
			return nil, fmt.Errorf("block map %s: %w", l.Digest, explain(err))
		}
	}
	empty := static.NewLayer([]byte("{}"), types.MediaType(ocispec.MediaTypeEmptyJSON))
	if err := p.r.pusher.Upload(ctx, p.r.repo, empty); err != nil {
		return nil, fmt.Errorf("empty config: %w", explain(err))
	}
	var at name.Reference = p.r.repo.Digest(mdesc.Digest.String())
	if p.tagChildren {
		at = p.r.repo.Tag(ChildTag(mdesc.Digest))
	}
	if err := p.r.putManifest(ctx, at, mdesc.MediaType, data); err != nil {
		return nil, err
	}
	p.prog.note("block map: pushed %s (%d layers)", mdesc.Digest, len(layers))
	return &mdesc, nil
}

// blockMaps reads, for a pull, the block map of a standard layer: the
// index's block map manifest once (the first listed that reads and checks),
// then the layer's map blob. A map that is missing, unreadable or wrong is
// no map: the layer is dehydrated by inflating its blocks.
type blockMaps struct {
	r      *repo
	root   digest.Digest
	listed func(context.Context) ([]ocispec.Descriptor, error)
	note   func(format string, args ...any)

	once sync.Once
	m    *blockMapManifest

	mu   sync.Mutex
	used *ocispec.Descriptor
}

func (b *blockMaps) manifest(ctx context.Context) *blockMapManifest {
	b.once.Do(func() {
		listed, err := b.listed(ctx)
		if err != nil {
			b.note("no block map (%v): inflating blocks", err)
			return
		}
		tried := 0
		for _, l := range listed {
			if !transport.IsBlockMap(l) || l.Size > maxBlockMapManifest {
				continue
			}
			if tried++; tried > maxBlockMapCandidates {
				break
			}
			data, err := b.r.manifest(ctx, l)
			if err != nil {
				b.note("block map %s: %v: skipped", l.Digest, err)
				continue
			}
			m, err := parseBlockMapManifest(data, b.root)
			if err != nil {
				b.note("%s: %v: skipped", l.Digest, err)
				continue
			}
			b.m = m
			return
		}
	})
	return b.m
}

// layer returns the block map of the standard layer std, or nil.
func (b *blockMaps) layer(ctx context.Context, std digest.Digest) map[digest.Digest]digest.Digest {
	m := b.manifest(ctx)
	if m == nil {
		return nil
	}
	desc, ok := m.layers[std]
	if !ok {
		return nil
	}
	rc, err := b.r.openBlob(ctx, desc)
	if err != nil {
		b.note("block map of layer %s: %v: inflating its blocks", std, err)
		return nil
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxBlockMapLayer+1))
	if err != nil {
		b.note("block map of layer %s: %v: inflating its blocks", std, err)
		return nil
	}
	known, err := parseBlockMap(data, std)
	if err != nil {
		b.note("block map %s of layer %s: %v: inflating its blocks", desc.Digest, std, err)
		return nil
	}
	b.mu.Lock()
	b.used = &m.desc
	b.mu.Unlock()
	return known
}
