package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	gtransport "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// DefaultJobs is how many blobs push and pull move at once by default.
const DefaultJobs = 4

// attempts is how many times one blob upload is tried (each re-opens the
// blob in the store), on top of go-containerregistry's own retries.
const attempts = 3

// PushOptions configure Push.
type PushOptions struct {
	// Remote are the connection options (transport.Registry.Remote).
	Remote []remote.Option
	// Jobs is how many blobs are uploaded at once (<= 0: DefaultJobs).
	Jobs int
	// Progress, if set, shows the bytes uploaded (PlainProgress: lines).
	Progress      io.Writer
	PlainProgress bool
	// TagChildren also tags every manifest the index names (and the
	// standard index of a multi-platform image, which only an annotation
	// names) as ChildTag(digest). The garbage collector of distribution
	// 2.x with --delete-untagged deletes the untagged children of a tagged
	// index (distribution/distribution#3004), which would break the tag
	// for every client; a tag keeps each child. Registries whose collector
	// follows indexes (distribution 3) do not need it.
	TagChildren bool
	// DeltaFrom names store images (earlier releases) from which to publish
	// a delta to this image beside it (delta.go): the bundle that bundle
	// create --from BASE makes, as an OCI referrer of the index. A delta
	// the registry already lists for a base is not made again.
	DeltaFrom []string
	// NoBlockMap skips the block map (blockmap.go) that push otherwise
	// publishes beside the index, so that first pulls need not inflate
	// blocks.
	NoBlockMap bool
}

// ChildTag is the tag TagChildren gives a manifest: "sha256-<hex>.blockfile",
// in the style of cosign's "sha256-<hex>.sig", and never the bare
// "sha256-<hex>" that the referrers tag schema reserves.
func ChildTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded() + ".blockfile"
}

// PushResult says what Push did.
type PushResult struct {
	Ref  string `json:"ref"`
	Name string `json:"name"`
	// Index is the image index now tagged Ref: pin it (or Standard) to
	// deploy by digest.
	Index ocispec.Descriptor `json:"index"`
	// Standard is the standard image old clients pull: what `skopeo copy`
	// of the tag (without --all) yields.
	Standard ocispec.Descriptor `json:"standard"`
	// StandardSize is the bytes of the standard image (manifests, config,
	// layers).
	StandardSize int64 `json:"standardSize"`
	Uploaded     Count `json:"uploaded"`  // blobs sent
	Mounted      Count `json:"mounted"`   // blobs mounted from another repository
	Skipped      Count `json:"skipped"`   // blobs the repository had
	Manifests    Count `json:"manifests"` // manifests and indexes put, the tagged index included
	// Referrers are the signatures, attestations and SBOMs of the image's
	// manifests that the store keeps, pushed after the image
	// (docs/SIGNING.md).
	Referrers int `json:"referrers,omitempty"`
	// Deltas are the deltas published (or found) for DeltaFrom.
	Deltas []DeltaPush `json:"deltas,omitempty"`
	// BlockMap is the image's block map manifest (docs/FORMAT.md section
	// 8d), pushed or found; absent when the image has no gzip layer with
	// blocks or the registry refused it (Warnings says why).
	BlockMap *ocispec.Descriptor `json:"blockMap,omitempty"`
	// Warnings are what went wrong without failing the push (the image is
	// complete under Ref): a block map the registry refused.
	Warnings []string `json:"warnings,omitempty"`
	// Materialized is set when standard layers missing from the store
	// (pulled or applied without materializing) were rebuilt first.
	Materialized bool          `json:"materialized,omitempty"`
	Duration     time.Duration `json:"durationNs"`
}

// Push uploads the image name of s under ref: every blob the repository
// lacks (skipped when a HEAD finds it, mounted when the store saw it in
// another repository of the registry), then the manifests, children before
// parents, then the image index, under ref's tag, last. A push killed at any
// point leaves the tag where it was (or absent) and can be re-run; blobs
// already uploaded are skipped.
func Push(ctx context.Context, s *store.Store, imageName string, ref name.Reference, opts PushOptions) (*PushResult, error) {
	start := time.Now()
	// gc must not remove what is being uploaded (or rebuilt, below).
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	idx, err := s.Resolve(ctx, imageName)
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", imageName, err)
	}
	idx = ocispec.Descriptor{MediaType: idx.MediaType, Digest: idx.Digest, Size: idx.Size}
	if idx.MediaType == "" {
		idx.MediaType = ocispec.MediaTypeImageIndex
	}
	if dr, ok := ref.(name.Digest); ok && dr.DigestStr() != idx.Digest.String() {
		return nil, fmt.Errorf("push %s to %s: the image is %s, not the digest named", imageName, ref, idx.Digest)
	}
	c, err := bundle.Walk(ctx, s, imageName, idx)
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", imageName, err)
	}
	res := &PushResult{Ref: ref.String(), Name: imageName, Index: idx, Standard: c.Standard}

	// Old clients need the standard layers; a store that pulled or applied
	// without materializing rebuilds them first.
	for _, h := range c.Hydrated {
		if _, ok, err := blobSize(ctx, s, h); err != nil {
			return nil, err
		} else if !ok {
			if _, err := image.Materialize(ctx, s, imageName); err != nil {
				return nil, fmt.Errorf("push %s: rebuild the standard layers: %w", imageName, err)
			}
			res.Materialized = true
			break
		}
	}

	var leaves []ocispec.Descriptor
	var manifests []bundle.Blob
	for _, b := range c.Blobs {
		if b.Kind == bundle.KindIndex || b.Kind == bundle.KindManifest || b.Kind == bundle.KindBlockedManifest || b.Kind == bundle.KindBlockSet {
			manifests = append(manifests, b)
			continue
		}
		leaves = append(leaves, b.Descriptor())
	}
	leaves = append(leaves, c.Hydrated...)
	if res.StandardSize, err = standardSize(ctx, s, c.Standard); err != nil {
		return nil, fmt.Errorf("push %s: %w", imageName, err)
	}

	r, err := newRepo(ref, opts.Remote)
	if err != nil {
		return nil, err
	}
	p := &pusher{s: s, r: r, res: res, registry: ref.Context().RegistryStr(), repoName: ref.Context().RepositoryStr(), tagChildren: opts.TagChildren}
	var total int64
	for _, l := range leaves {
		total += l.Size
	}
	p.prog = newProgress(opts.Progress, opts.PlainProgress, total, "push "+ref.String())
	err = p.blobs(ctx, leaves, opts.Jobs)
	p.prog.finish()
	if err == nil {
		err = p.manifests(ctx, idx, manifests)
	}
	if err != nil {
		return nil, err
	}
	// Signatures, attestations and SBOMs of the image's manifests, with
	// the tag scheme where the registry has no referrers API.
	var subjects []digest.Digest
	for _, b := range c.Blobs {
		if b.Kind == bundle.KindIndex || b.Kind == bundle.KindManifest {
			subjects = append(subjects, b.Digest)
		}
	}
	refs, err := s.ReferrersClosure(ctx, subjects...)
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", imageName, err)
	}
	if len(refs) > 0 {
		if err := transport.PushReferrersTo(ctx, ref, opts.Remote, s, refs); err != nil {
			return nil, fmt.Errorf("push %s: pushed the image, but not its signatures and attestations: %w", imageName, err)
		}
		res.Referrers = len(refs)
	}
	// Deltas and the block map: referrers of the index, listed once (a
	// block map the listing misses is pushed again: same bytes).
	var listed []ocispec.Descriptor
	var lerr error
	if len(opts.DeltaFrom) > 0 || !opts.NoBlockMap {
		listed, lerr = transport.ListTransport(ctx, p.r.repo, p.r.opts, idx.Digest)
	}
	if len(opts.DeltaFrom) > 0 {
		if lerr != nil {
			return nil, fmt.Errorf("push %s: deltas: %w", imageName, lerr)
		}
		if res.Deltas, err = p.pushDeltas(ctx, imageName, idx, opts.DeltaFrom, listed); err != nil {
			return nil, err
		}
	}
	if !opts.NoBlockMap {
		// A speed-up for first pulls, not part of the image: a registry
		// that refuses it still serves the image, so the push goes on.
		if res.BlockMap, err = p.pushBlockMap(ctx, idx, listed); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			res.Warnings = append(res.Warnings, fmt.Sprintf("block map not pushed (%v): first pulls will inflate the blocks of the layers they read whole", err))
		}
	}
	// Remember where the blobs now are, for mounts into other repositories.
	ds := make([]digest.Digest, 0, len(leaves))
	for _, l := range leaves {
		ds = append(ds, l.Digest)
	}
	if err := recordSeen(s, p.registry, p.repoName, ds); err != nil {
		return nil, err
	}
	res.Duration = time.Since(start)
	return res, nil
}

type pusher struct {
	s           *store.Store
	r           *repo
	res         *PushResult
	prog        *progress
	registry    string
	repoName    string
	tagChildren bool
	mu          sync.Mutex
}

// blobs uploads the leaves, jobs at a time.
func (p *pusher) blobs(ctx context.Context, leaves []ocispec.Descriptor, jobs int) error {
	if jobs <= 0 {
		jobs = DefaultJobs
	}
	// Largest first, so a big layer does not start last.
	leaves = slices.Clone(leaves)
	slices.SortStableFunc(leaves, func(a, b ocispec.Descriptor) int { return int(min(max(b.Size-a.Size, -1), 1)) })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, l := range leaves {
		g.Go(func() error { return p.blob(gctx, l) })
	}
	return g.Wait()
}

func (p *pusher) blob(ctx context.Context, desc ocispec.Descriptor) error {
	var err error
	for try := 1; try <= attempts; try++ {
		if err = p.tryBlob(ctx, desc); err == nil || !retryable(ctx, err) {
			break
		}
		p.prog.note("blob %s: %v (attempt %d of %d)", desc.Digest, err, try, attempts)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try) * time.Second):
		}
	}
	if err != nil {
		return fmt.Errorf("push %s: blob %s: %w", p.r.repo, desc.Digest, explain(err))
	}
	return nil
}

func (p *pusher) tryBlob(ctx context.Context, desc ocispec.Descriptor) error {
	l := &uploadLayer{ctx: ctx, s: p.s, desc: desc, prog: p.prog}
	var layer v1.Layer = l
	for _, from := range seenIn(p.s, p.registry, desc.Digest) {
		if from == p.repoName {
			continue
		}
		if src, err := name.NewRepository(p.registry+"/"+from, nameOptions(p.r.repo)...); err == nil {
			// Upload asks the registry to mount it from there, and
			// uploads it if the registry declines.
			layer = &remote.MountableLayer{Layer: l, Reference: src.Digest(desc.Digest.String())}
			break
		}
	}
	if layer != l {
		// Tell a blob already here from one mounted: both read nothing.
		found, err := p.r.blobExists(ctx, desc.Digest)
		if err != nil {
			return err
		}
		if found {
			p.prog.add(desc.Size)
			p.count(&p.res.Skipped, desc.Size)
			return nil
		}
	}
	// Upload checks (HEAD) whether the repository has the blob first.
	if err := p.r.pusher.Upload(ctx, p.r.repo, layer); err != nil {
		return err
	}
	switch {
	case l.read.Load() > 0:
		p.count(&p.res.Uploaded, desc.Size)
	case layer != l:
		// Nothing read from the store, and not there before: mounted.
		p.prog.add(desc.Size)
		p.count(&p.res.Mounted, desc.Size)
	default:
		p.prog.add(desc.Size)
		p.count(&p.res.Skipped, desc.Size)
	}
	return nil
}

func (p *pusher) count(c *Count, n int64) {
	p.mu.Lock()
	c.add(n)
	p.mu.Unlock()
}

// manifests puts every manifest by digest, children before parents (block
// sets, blocked and standard manifests, then other indexes), then the
// image index under the reference: the tag moves only once all it names is
// there.
func (p *pusher) manifests(ctx context.Context, idx ocispec.Descriptor, ms []bundle.Blob) error {
	rank := func(k bundle.Kind) int {
		switch k {
		case bundle.KindBlockSet:
			return 0
		case bundle.KindBlockedManifest:
			return 1
		case bundle.KindManifest:
			return 2
		}
		return 3
	}
	var order []bundle.Blob
	for _, m := range ms {
		if m.Digest != idx.Digest {
			order = append(order, m)
		}
	}
	slices.SortStableFunc(order, func(a, b bundle.Blob) int { return rank(a.Kind) - rank(b.Kind) })
	put := func(ref name.Reference, desc ocispec.Descriptor) error {
		var data []byte
		rc, err := p.s.Fetch(ctx, desc)
		if err != nil {
			return fmt.Errorf("push %s: %w", p.r.repo, err)
		}
		data, err = io.ReadAll(io.LimitReader(rc, maxManifest+1))
		rc.Close()
		if err != nil {
			return fmt.Errorf("push %s: manifest %s: %w", p.r.repo, desc.Digest, err)
		}
		if err := p.r.putManifest(ctx, ref, desc.MediaType, data); err != nil {
			return err
		}
		p.res.Manifests.add(desc.Size)
		return nil
	}
	p.prog.note("%d manifests, then the index", len(order))
	for _, m := range order {
		var at name.Reference = p.r.repo.Digest(m.Digest.String())
		if p.tagChildren {
			at = p.r.repo.Tag(ChildTag(m.Digest))
		}
		if err := put(at, m.Descriptor()); err != nil {
			return err
		}
	}
	return put(p.r.ref, idx)
}

// nameOptions keeps the plain-HTTP choice of the reference for a sibling
// repository of the same registry.
func nameOptions(r name.Repository) []name.Option {
	if r.Registry.Scheme() == "http" {
		return []name.Option{name.Insecure}
	}
	return nil
}

// retryable: worth trying the blob again (network trouble, a server
// error), not a refusal or a cancellation.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) || errors.Is(err, store.ErrNotFound) {
		return false
	}
	var te *gtransport.Error
	if errors.As(err, &te) {
		return te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests || te.StatusCode == http.StatusRequestTimeout
	}
	return true
}

// blobSize returns the size of blob desc in s, if present with that size.
func blobSize(ctx context.Context, s *store.Store, desc ocispec.Descriptor) (int64, bool, error) {
	ok, err := s.Exists(ctx, desc.Digest)
	if err != nil || !ok {
		return 0, false, err
	}
	fi, err := statBlob(s, desc.Digest)
	if err != nil {
		return 0, false, err
	}
	if fi < 0 || fi != desc.Size {
		return 0, false, nil
	}
	return fi, true, nil
}

// standardSize is the bytes of the standard image desc: its manifest(s),
// configs and layers, as a plain client pulls them.
func standardSize(ctx context.Context, f bundle.Fetcher, desc ocispec.Descriptor) (int64, error) {
	n := desc.Size
	switch {
	case transport.IsIndex(desc.MediaType):
		var idx ocispec.Index
		if err := getJSON(ctx, f, desc, &idx); err != nil {
			return 0, err
		}
		for _, m := range idx.Manifests {
			if !transport.IsManifest(m.MediaType) || m.Annotations["vnd.docker.reference.type"] != "" {
				continue // attestations: not what a client pulls to run
			}
			k, err := standardSize(ctx, f, m)
			if err != nil {
				return 0, err
			}
			n += k
		}
	case transport.IsManifest(desc.MediaType):
		var m ocispec.Manifest
		if err := getJSON(ctx, f, desc, &m); err != nil {
			return 0, err
		}
		n += m.Config.Size
		for _, l := range m.Layers {
			n += l.Size
		}
	}
	return n, nil
}
