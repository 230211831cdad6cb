package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	gtransport "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/tree"
)

// Block manifests: how `block push` keeps blocks alive in a registry.
const (
	// ArtifactTypeBlocks is the artifactType of a block manifest: an OCI
	// image manifest whose layers are raw blocks and tree documents, so a
	// registry's garbage collector, which marks from tagged manifests, keeps
	// every one of them.
	ArtifactTypeBlocks = "application/vnd.blockfile.blocks.v1"
	// AnnotationBlockShard is the 0-based position of a block manifest among
	// the manifests of one tag; AnnotationBlockShards, on the first (the one
	// under the tag itself), is how many there are.
	AnnotationBlockShard  = "dev.blockfile.blocks.shard"
	AnnotationBlockShards = "dev.blockfile.blocks.shards"

	// DefaultBlockTag is the tag block push keeps its manifests under.
	DefaultBlockTag = "blocks"
	// MaxBlocksPerManifest keeps each block manifest near 1.6 MiB, well under
	// the 4 MiB registries accept.
	MaxBlocksPerManifest = 10000
	maxManifestBytes     = 4 << 20
	maxShards            = 10000
)

// emptyConfig is the OCI empty descriptor's blob ("{}"), the config of a
// block manifest.
var emptyConfig = []byte("{}")

// ShardTag is the tag of block manifest i under tag: tag itself for the
// first, tag-<i> for the others. Each is tagged, not gathered under an
// index, because distribution's `garbage-collect --delete-untagged` (2.x)
// deletes the untagged manifests an index names, and their blocks with them.
func ShardTag(tag string, i int) string {
	if i == 0 {
		return tag
	}
	return tag + "-" + strconv.Itoa(i)
}

// BlocksToPush returns the blocks to publish for digests, or, with none
// given, every block recorded by `block add` that the store holds; a tree
// block brings the file blocks it lists. Missing reports recorded blocks
// whose blob is gone (skipped); a named or tree-listed block that is
// missing is an error, since a build importing it would fail.
func BlocksToPush(ctx context.Context, s *store.Store, digests []digest.Digest) (out []ocispec.Descriptor, missing []digest.Digest, err error) {
	recorded, err := s.RecordedBlocks(ctx)
	if err != nil {
		return nil, nil, err
	}
	known := map[digest.Digest]ocispec.Descriptor{}
	for _, d := range recorded {
		known[d.Digest] = d
	}
	var roots []ocispec.Descriptor
	if len(digests) == 0 {
		for _, d := range recorded {
			ok, err := s.Exists(ctx, d.Digest)
			if err != nil {
				return nil, nil, err
			}
			if !ok {
				missing = append(missing, d.Digest)
				continue
			}
			roots = append(roots, d)
		}
	} else {
		for _, d := range digests {
			if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
				return nil, nil, fmt.Errorf("block %q: want sha256:<64 hex>", d)
			}
			desc, err := describeStored(ctx, s, d, known)
			if err != nil {
				return nil, nil, err
			}
			roots = append(roots, desc)
		}
	}
	seen := map[digest.Digest]bool{}
	add := func(d ocispec.Descriptor) {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			out = append(out, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
		}
	}
	for _, r := range roots {
		add(r)
		if r.MediaType != blocks.MediaTypeTree {
			continue
		}
		t, err := readTree(ctx, s, r)
		if err != nil {
			return nil, nil, err
		}
		for _, e := range t.Entries {
			if e.Type != tree.TypeFile || seen[e.Digest] {
				continue
			}
			fd := ocispec.Descriptor{MediaType: blocks.MediaTypeBlock, Digest: e.Digest, Size: e.Size}
			ok, err := s.Exists(ctx, e.Digest)
			if err != nil {
				return nil, nil, err
			}
			if !ok {
				return nil, nil, fmt.Errorf("tree block %s: file %s (block %s) is not in the store", r.Digest, e.Path, e.Digest)
			}
			add(fd)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, missing, nil
}

// describeStored finds the size and kind of block d in the store: from its
// record if `block add` made one, else from the blob (a tree document parses
// as one).
func describeStored(ctx context.Context, s *store.Store, d digest.Digest, known map[digest.Digest]ocispec.Descriptor) (ocispec.Descriptor, error) {
	ok, err := s.Exists(ctx, d)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if !ok {
		return ocispec.Descriptor{}, fmt.Errorf("block %s: not in the store %s", d, s.Root())
	}
	if desc, ok := known[d]; ok {
		return desc, nil
	}
	size, ok, err := s.BlobSize(ctx, d)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("block %s: %w", d, err)
	}
	if !ok {
		return ocispec.Descriptor{}, fmt.Errorf("block %s: not in the store %s", d, s.Root())
	}
	desc := ocispec.Descriptor{MediaType: blocks.MediaTypeBlock, Digest: d, Size: size}
	if desc.Size <= tree.DefaultLimit {
		if _, err := readTree(ctx, s, desc); err == nil {
			desc.MediaType = blocks.MediaTypeTree
		}
	}
	return desc, nil
}

func readTree(ctx context.Context, s *store.Store, desc ocispec.Descriptor) (*tree.Tree, error) {
	rc, err := s.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("tree block %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	t, err := tree.Parse(rc, tree.DefaultLimit)
	if err != nil {
		return nil, fmt.Errorf("tree block %s: %w", desc.Digest, err)
	}
	// Parse stops at the document; read to EOF so the digest is checked.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return nil, fmt.Errorf("tree block %s: %w", desc.Digest, err)
	}
	return t, nil
}

// BlockPushOptions tunes PushBlocks.
type BlockPushOptions struct {
	// Tag the block manifests are kept under (DefaultBlockTag if empty).
	Tag string
	// Concurrency is how many blocks upload at once (default 4).
	Concurrency int
	// BlocksPerManifest caps each block manifest (default and maximum
	// MaxBlocksPerManifest).
	BlocksPerManifest int
	// Progress, if set, is called after each block is checked or uploaded
	// (from several goroutines, never at once).
	Progress func(BlockPushProgress)
}

// BlockPushProgress is the state of a block push.
type BlockPushProgress struct {
	Done, Total   int   // blocks checked or uploaded, of all to push
	UploadedBytes int64 // bytes sent so far
}

// BlockPushResult says what PushBlocks did.
type BlockPushResult struct {
	Repository string           `json:"repository"`
	Tag        string           `json:"tag"`
	Manifests  []TaggedManifest `json:"manifests"` // the block manifests, first under Tag
	Blocks     int              `json:"blocks"`    // blocks the tag keeps, earlier pushes included
	Uploaded   Count            `json:"uploaded"`  // blocks this run sent
	Present    Count            `json:"present"`   // blocks the registry already had
	Added      int              `json:"added"`     // blocks this run added to the tag
	Missing    []digest.Digest  `json:"missing,omitempty"`
}

// Count is a number of blobs and their bytes.
type Count struct {
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

// TaggedManifest is one block manifest and its tag.
type TaggedManifest struct {
	Tag    string        `json:"tag"`
	Digest digest.Digest `json:"digest"`
	Blocks int           `json:"blocks"`
}

// PushBlocks publishes blocks (raw blocks and tree documents, see
// BlocksToPush) to the repository repo so that builds with
// --build-arg BLOCKFILE_REPO=<repo> fetch them as blobs (llb.ImageBlob), and
// keeps them referenced by tagged block manifests so that registry garbage
// collection never drops them.
//
// A block the registry already has (HEAD) is not sent again; the others
// upload concurrently, each from the store and verified as it is read, and
// a retried upload re-opens the blob. The manifests already under the tag
// are read first and their blocks kept, so each run adds to what earlier
// runs published; manifests are written last shard first, the one under
// the tag itself last, and read back to check they name every block.
// opts are the registry options of transport.Registry.Remote.
func PushBlocks(ctx context.Context, s *store.Store, repo name.Repository, opts []remote.Option, descs []ocispec.Descriptor, o BlockPushOptions) (*BlockPushResult, error) {
	tag := o.Tag
	if tag == "" {
		tag = DefaultBlockTag
	}
	if _, err := name.NewTag(repo.String()+":"+ShardTag(tag, maxShards), name.StrictValidation); err != nil {
		return nil, fmt.Errorf("block tag %q: %w", tag, err)
	}
	conc := o.Concurrency
	if conc <= 0 {
		conc = 4
	}
	opts = append(append([]remote.Option(nil), opts...), remote.WithContext(ctx))
	puller, err := remote.NewPuller(opts...)
	if err != nil {
		return nil, err
	}
	pusher, err := remote.NewPusher(opts...)
	if err != nil {
		return nil, err
	}
	res := &BlockPushResult{Repository: repo.String(), Tag: tag}

	// What the tag keeps already.
	prev, err := readBlockManifests(ctx, puller, repo, tag)
	if err != nil {
		return nil, err
	}

	// Upload what the registry lacks.
	var done atomic.Int64
	var sent atomic.Int64
	var mu sync.Mutex
	report := func() {
		if o.Progress != nil {
			mu.Lock()
			o.Progress(BlockPushProgress{Done: int(done.Load()), Total: len(descs), UploadedBytes: sent.Load()})
			mu.Unlock()
		}
	}
	var upMu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	for _, d := range descs {
		g.Go(func() error {
			uploaded, err := pushBlock(gctx, s, puller, pusher, repo, d)
			if err != nil {
				return err
			}
			upMu.Lock()
			if uploaded {
				res.Uploaded.Blobs++
				res.Uploaded.Bytes += d.Size
				sent.Add(d.Size)
			} else {
				res.Present.Blobs++
				res.Present.Bytes += d.Size
			}
			upMu.Unlock()
			done.Add(1)
			report()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// The union, earlier blocks first in their order (so existing shards
	// keep their content), new ones appended.
	all := append([]ocispec.Descriptor(nil), prev...)
	have := map[digest.Digest]bool{}
	for _, d := range prev {
		have[d.Digest] = true
	}
	for _, d := range descs {
		if !have[d.Digest] {
			have[d.Digest] = true
			all = append(all, d)
			res.Added++
		}
	}
	res.Blocks = len(all)
	if len(all) == 0 {
		return nil, errors.New("no blocks to push: add some with 'blockfile block add' or name them")
	}

	// The empty config every block manifest names.
	cfg := ocispec.DescriptorEmptyJSON
	if err := pusher.Upload(ctx, repo, &storeLayer{desc: cfg, open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(emptyConfig)), nil
	}}); err != nil {
		return nil, fmt.Errorf("%s: push the empty config: %w", repo, err)
	}

	per := o.BlocksPerManifest
	if per <= 0 || per > MaxBlocksPerManifest {
		per = MaxBlocksPerManifest
	}
	shards := (len(all) + per - 1) / per
	if shards > maxShards {
		return nil, fmt.Errorf("%s: %d blocks need more than %d manifests", repo, len(all), maxShards)
	}
	manifests := make([][]byte, shards)
	for i := range shards {
		part := all[i*per : min(len(all), (i+1)*per)]
		m := ocispec.Manifest{
			Versioned:    specs.Versioned{SchemaVersion: 2},
			MediaType:    ocispec.MediaTypeImageManifest,
			ArtifactType: ArtifactTypeBlocks,
			Config:       cfg,
			Layers:       part,
			Annotations:  map[string]string{AnnotationBlockShard: strconv.Itoa(i)},
		}
		if i == 0 {
			m.Annotations[AnnotationBlockShards] = strconv.Itoa(shards)
		}
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		if len(b) > maxManifestBytes {
			return nil, fmt.Errorf("%s: block manifest %d is %d bytes, over %d", repo, i, len(b), maxManifestBytes)
		}
		manifests[i] = b
		res.Manifests = append(res.Manifests, TaggedManifest{Tag: ShardTag(tag, i), Digest: digest.FromBytes(b), Blocks: len(part)})
	}
	// Last shard first: blocks only move to later shards as the tag grows,
	// so every block stays referenced while the tags move; the tag itself,
	// which says how many shards there are, goes last.
	for i := shards - 1; i >= 0; i-- {
		ref := repo.Tag(ShardTag(tag, i))
		if err := pusher.Push(ctx, ref, rawManifest(manifests[i])); err != nil {
			return nil, fmt.Errorf("%s: push block manifest: %w", ref, err)
		}
	}

	// Read back: the tag must now name every block, earlier ones included.
	back, err := readBlockManifests(ctx, puller, repo, tag)
	if err != nil {
		return nil, fmt.Errorf("%s: read back: %w", repo.Tag(tag), err)
	}
	got := map[digest.Digest]bool{}
	for _, d := range back {
		got[d.Digest] = true
	}
	for _, d := range all {
		if !got[d.Digest] {
			return nil, fmt.Errorf("%s: read back: block %s is not referenced; another push may have replaced the tag", repo.Tag(tag), d.Digest)
		}
	}
	return res, nil
}

// pushBlock uploads d unless the registry has it; it says whether it sent it.
func pushBlock(ctx context.Context, s *store.Store, puller *remote.Puller, pusher *remote.Pusher, repo name.Repository, d ocispec.Descriptor) (bool, error) {
	l, err := puller.Layer(ctx, repo.Digest(d.Digest.String()))
	if err != nil {
		return false, fmt.Errorf("%s: block %s: %w", repo, d.Digest, err)
	}
	if ex, ok := l.(interface{ Exists() (bool, error) }); ok {
		found, err := ex.Exists()
		if err != nil {
			return false, fmt.Errorf("%s: block %s: %w", repo, d.Digest, err)
		}
		if found {
			return false, nil
		}
	}
	sl := &storeLayer{desc: d, open: func() (io.ReadCloser, error) { return s.Fetch(ctx, d) }}
	if err := pusher.Upload(ctx, repo, sl); err != nil {
		return false, fmt.Errorf("%s: push block %s: %w", repo, d.Digest, err)
	}
	return true, nil
}

// readBlockManifests returns the blocks the block manifests under tag name,
// in shard order, or none if the tag does not exist. A tag holding anything
// else than block manifests is an error: block push does not overwrite it.
func readBlockManifests(ctx context.Context, puller *remote.Puller, repo name.Repository, tag string) ([]ocispec.Descriptor, error) {
	first, err := getBlockManifest(ctx, puller, repo.Tag(tag))
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(first.Annotations[AnnotationBlockShards])
	if err != nil || n < 1 || n > maxShards {
		return nil, fmt.Errorf("%s: block manifest says %q shards", repo.Tag(tag), first.Annotations[AnnotationBlockShards])
	}
	out := append([]ocispec.Descriptor(nil), first.Layers...)
	for i := 1; i < n; i++ {
		m, err := getBlockManifest(ctx, puller, repo.Tag(ShardTag(tag, i)))
		if err != nil {
			return nil, err
		}
		if m.Annotations[AnnotationBlockShard] != strconv.Itoa(i) {
			return nil, fmt.Errorf("%s: block manifest is shard %q, want %d", repo.Tag(ShardTag(tag, i)), m.Annotations[AnnotationBlockShard], i)
		}
		out = append(out, m.Layers...)
	}
	return out, nil
}

func getBlockManifest(ctx context.Context, puller *remote.Puller, ref name.Tag) (*ocispec.Manifest, error) {
	d, err := puller.Get(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	m, err := parseBlockManifest(d.Manifest, digest.Digest(d.Digest.String()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return m, nil
}

// parseBlockManifest checks a block manifest read from a registry: its
// bytes against the digest the registry gave, its size, type and every
// block descriptor.
func parseBlockManifest(b []byte, want digest.Digest) (*ocispec.Manifest, error) {
	if len(b) > maxManifestBytes {
		return nil, fmt.Errorf("manifest of %d bytes, over %d", len(b), maxManifestBytes)
	}
	if got := digest.FromBytes(b); got != want {
		return nil, fmt.Errorf("manifest bytes hash to %s, the registry says %s", got, want)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("block manifest: %w", err)
	}
	if m.ArtifactType != ArtifactTypeBlocks {
		return nil, fmt.Errorf("holds %q (artifactType %q), not a block manifest (%s): choose another tag", m.MediaType, m.ArtifactType, ArtifactTypeBlocks)
	}
	if len(m.Layers) > MaxBlocksPerManifest {
		return nil, fmt.Errorf("block manifest names %d blocks, over %d", len(m.Layers), MaxBlocksPerManifest)
	}
	for _, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil || l.Digest.Algorithm() != digest.SHA256 || l.Size < 0 {
			return nil, fmt.Errorf("block %q (size %d): invalid descriptor", l.Digest, l.Size)
		}
		if l.MediaType != blocks.MediaTypeBlock && l.MediaType != blocks.MediaTypeTree {
			return nil, fmt.Errorf("block %s: media type %q is not a block", l.Digest, l.MediaType)
		}
	}
	return &m, nil
}

// isNotFound reports whether the registry answered 404 or a *_UNKNOWN code.
func isNotFound(err error) bool {
	var te *gtransport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		switch d.Code {
		case gtransport.ManifestUnknownErrorCode, gtransport.BlobUnknownErrorCode, gtransport.NameUnknownErrorCode:
			return true
		}
	}
	return false
}

// storeLayer is a v1.Layer whose bytes come from open, called again for a
// retried upload.
type storeLayer struct {
	desc ocispec.Descriptor
	open func() (io.ReadCloser, error)
}

var errNotLayer = errors.New("a block is not an image layer")

func (l *storeLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }
func (l *storeLayer) DiffID() (v1.Hash, error) { return v1.Hash{}, errNotLayer }
func (l *storeLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *storeLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *storeLayer) Uncompressed() (io.ReadCloser, error) { return nil, errNotLayer }
func (l *storeLayer) Compressed() (io.ReadCloser, error)   { return l.open() }

// rawManifest is a manifest to put as is.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error) { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}
