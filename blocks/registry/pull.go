package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// PullOptions configure Pull.
type PullOptions struct {
	// Remote are the connection options (transport.Registry.Remote).
	Remote []remote.Option
	// Jobs is how many blobs are downloaded at once (<= 0: DefaultJobs).
	Jobs int
	// Progress, if set, shows the bytes downloaded (PlainProgress: lines),
	// and the hydration of each output.
	Progress      io.Writer
	PlainProgress bool
	// NoMaterialize keeps only the blocked form in the store (as bundle
	// apply --materialize=false): enough to hydrate on demand, to push, and
	// to make bundles.
	NoMaterialize bool
	// Outputs are sinks the image is written to once it is in the store
	// (oci:DIR[:REF], oci-archive:FILE[:REF], docker://REF; "{name}" is
	// the image name), as bundle apply's --output.
	Outputs []string
	// Export configures the export of an image without a blocked form
	// (its Progress fields are set from the ones above).
	Export image.ExportOptions
	// Registry is the connection configuration for docker:// outputs.
	Registry transport.Registry
	// HTTP is Remote's connection for the requests go-containerregistry
	// does not make (transport.Endpoint.HTTP): with it, the members a layer
	// lacks are read as byte ranges of the standard layer and that layer is
	// written as they arrive (ranges.go); without it, each member is one GET
	// and the layers are hydrated afterwards.
	HTTP *transport.HTTP
	// NoDeltas fetches the blobs the store lacks even when the registry
	// holds a delta to the image from an image the store has (delta.go).
	NoDeltas bool
	// NoBlockMap dehydrates layers read whole by inflating their blocks
	// even when the registry holds the image's block map (blockmap.go).
	NoBlockMap bool
}

// PullResult says what Pull did.
type PullResult struct {
	Ref  string `json:"ref"`
	Name string `json:"name"`
	// Remote is what the reference named in the registry.
	Remote ocispec.Descriptor `json:"remote"`
	// Blocked is set when Remote held a blocked form; if not, the image
	// was pulled whole and exported (Index and Standard are then the
	// store's: export re-frames layers).
	Blocked bool `json:"blocked"`
	// Index is the image index tagged Name in the store, Standard the
	// standard image it hydrates to.
	Index    ocispec.Descriptor `json:"index"`
	Standard ocispec.Descriptor `json:"standard"`
	// StandardSize is the bytes a plain client downloads for the image
	// (the standard manifests, configs and layers in the registry).
	StandardSize int64 `json:"standardSize"`
	// Downloaded counts the blobs fetched and every byte read from the
	// registry (manifests included).
	Downloaded Count `json:"downloaded"`
	// Present counts the blobs the store already held.
	Present Count `json:"present"`
	// Ranges is how many Range GETs of standard layers were made, and
	// WholeLayers how many of them the registry answered with the whole
	// layer (which was then read through; its bytes are in Downloaded).
	Ranges      int `json:"ranges,omitempty"`
	WholeLayers int `json:"wholeLayers,omitempty"`
	// Dehydrated counts the layers read whole by design (one GET of the
	// standard layer, its blocked layer derived from it: ranges.go,
	// wholeLayer), and of them Derived those whose derived blocked layer
	// was the registry's (the others read it too).
	Dehydrated int `json:"dehydrated,omitempty"`
	Derived    int `json:"derived,omitempty"`
	// BlockMap is the block map manifest that named the raw blocks of the
	// layers dehydrated (blockmap.go), if one did.
	BlockMap *ocispec.Descriptor `json:"blockMap,omitempty"`
	// Delta is the delta bundle the pull applied instead of fetching the
	// blobs the store lacked (delta.go), if any.
	Delta *DeltaPull `json:"delta,omitempty"`
	// Referrers counts the signatures, attestations and SBOMs copied with
	// the image (docs/SIGNING.md).
	Referrers int           `json:"referrers,omitempty"`
	Outputs   []string      `json:"outputs,omitempty"`
	Duration  time.Duration `json:"durationNs"`
}

// DefaultName is the store name a pull of ref gets without one:
// repository:tag (or repository@digest), without the registry host.
func DefaultName(ref name.Reference) string {
	switch r := ref.(type) {
	case name.Tag:
		return r.RepositoryStr() + ":" + r.TagStr()
	case name.Digest:
		return r.RepositoryStr() + "@" + r.DigestStr()
	}
	return ref.Context().RepositoryStr()
}

// Pull reads ref into s under imageName ("" = DefaultName(ref)). If ref's
// image index holds a blocked form, Pull fetches its manifests, then the
// blobs the store lacks among those the blocked form needs (configs,
// blocked layers, block members; never a standard layer that hydrate
// rebuilds); otherwise it pulls the image whole and exports it, as
// blockfile export does. Every blob is verified (digest and size) before
// any is written into place, so a failure leaves the store and the outputs
// unchanged; then the image is tagged, materialized unless NoMaterialize,
// and written to each output, by the code bundle apply uses.
func Pull(ctx context.Context, s *store.Store, ref name.Reference, imageName string, opts PullOptions) (*PullResult, error) {
	start := time.Now()
	if imageName == "" {
		imageName = DefaultName(ref)
	}
	// The lease keeps gc from sweeping what the pull writes, and the blobs
	// it finds present, until the image is tagged and hydrated.
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer release()
	r, err := newRepo(ref, opts.Remote)
	if err != nil {
		return nil, err
	}
	data, root, err := r.getManifest(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	res := &PullResult{Ref: ref.String(), Name: imageName, Remote: root}
	if root.MediaType == ocispec.MediaTypeImageIndex {
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return nil, fmt.Errorf("pull %s: index %s: %w", ref, root.Digest, err)
		}
		res.Blocked = idx.Annotations[blocks.AnnotationStandard] != ""
	}
	meta := &metaFetcher{r: r, docs: map[digest.Digest][]byte{root.Digest: data}, held: root.Size}
	if !res.Blocked {
		err = pullWhole(ctx, s, meta, root, res, opts)
	} else {
		err = pullBlocked(ctx, s, meta, root, res, opts)
	}
	if err != nil {
		return nil, err
	}
	res.Downloaded.Bytes = r.down.Load()
	res.Duration = time.Since(start)
	return res, nil
}

// HasBlockedForm reports whether ref names an image index that holds a
// blocked form (so that export and bundle create can pull it rather than
// read its standard image whole).
func HasBlockedForm(ctx context.Context, ref name.Reference, opts []remote.Option) (bool, error) {
	r, err := newRepo(ref, opts)
	if err != nil {
		return false, err
	}
	data, root, err := r.getManifest(ctx, ref)
	if err != nil {
		return false, err
	}
	if root.MediaType != ocispec.MediaTypeImageIndex {
		return false, nil
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return false, fmt.Errorf("%s: index %s: %w", ref, root.Digest, err)
	}
	return idx.Annotations[blocks.AnnotationStandard] != "", nil
}

func pullBlocked(ctx context.Context, s *store.Store, meta *metaFetcher, root ocispec.Descriptor, res *PullResult, opts PullOptions) (err error) {
	ref := meta.r.ref
	var idx ocispec.Index
	if err := getJSON(ctx, meta, root, &idx); err == nil {
		meta.prefetch(ctx, s, idx, 8)
	}
	c, err := bundle.Walk(ctx, storeFirst{s: s, next: meta}, res.Name, root)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	// The image keeps its digests: its signatures, attestations and SBOMs
	// still apply (docs/SIGNING.md). They are listed while the blobs
	// download (a registry without the referrers API takes two requests
	// per manifest), and copied once the image is in the store.
	var subjects []digest.Digest
	for _, b := range c.Blobs {
		if b.Kind == bundle.KindIndex || b.Kind == bundle.KindManifest {
			subjects = append(subjects, b.Digest)
		}
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // listings not needed once the pull ends
	listed := prefetchReferrers(lctx, &remoteSource{meta: meta, root: root}, subjects, opts.Export.NoReferrers)
	res.Index, res.Standard = root, c.Standard
	if res.StandardSize, err = standardSize(ctx, meta, c.Standard); err != nil {
		return fmt.Errorf("pull %s: standard image: %w", ref, err)
	}
	var need []bundle.Blob
	var total int64
	for _, b := range c.Blobs {
		if _, ok, err := blobSize(ctx, s, b.Descriptor()); err != nil {
			return fmt.Errorf("pull %s: %w", ref, err)
		} else if ok {
			res.Present.add(b.Size)
			continue
		}
		need = append(need, b)
		total += b.Size
	}
	// The index's deltas and block map: one listing, made when first
	// needed.
	listing := sync.OnceValues(func() ([]ocispec.Descriptor, error) {
		return transport.ListTransport(ctx, meta.r.repo, meta.r.opts, root.Digest)
	})
	if need, total, err = useDelta(ctx, s, meta, root, c, need, total, listing, res, opts); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	prog := newProgress(opts.Progress, opts.PlainProgress, total, "pull "+ref.String())
	batch := s.NewBatch()
	defer func() {
		if err != nil {
			batch.Discard()
		}
	}()
	err = fetchBlobs(ctx, s, meta, root, &lockedBatch{b: batch}, need, listing, opts, prog, res)
	prog.finish()
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := s.Tag(ctx, res.Name, root); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if !opts.Export.NoReferrers {
		refs, err := image.CopyReferrers(ctx, s, listed, subjects)
		if err != nil {
			return fmt.Errorf("pull %s: signatures and attestations: %w", ref, err)
		}
		res.Referrers = len(refs)
	}
	// The repository holds the image's blobs: noted for cross-repository
	// mounts (seen.go), once the pull has succeeded (a failed pull leaves
	// the store as it was).
	var ds []digest.Digest
	for _, b := range c.Blobs {
		if !b.Kind.Metadata() || b.Kind == bundle.KindConfig {
			ds = append(ds, b.Digest)
		}
	}
	if err := recordSeen(s, ref.Context().RegistryStr(), ref.Context().RepositoryStr(), ds); err != nil {
		return err
	}
	res.Outputs, err = bundle.Deliver(ctx, s, bundle.Image{Name: res.Name, Index: root, Standard: c.Standard}, bundle.ApplyOptions{
		Outputs: opts.Outputs, NoMaterialize: opts.NoMaterialize, HydrateProgress: opts.Progress, PlainProgress: opts.PlainProgress,
		Registry: opts.Registry,
	})
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// fetchBlobs downloads need into the batch. With a connection for Range
// GETs (opts.HTTP), the layers that lack members read them, and write their
// standard layer, through ranges (ranges.go), beside the other blobs.
func fetchBlobs(ctx context.Context, s *store.Store, meta *metaFetcher, root ocispec.Descriptor, batch *lockedBatch, need []bundle.Blob, listing func() ([]ocispec.Descriptor, error), opts PullOptions, prog *progress, res *PullResult) error {
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = DefaultJobs
	}
	if opts.HTTP == nil {
		return fetchAll(ctx, s, meta, batch, need, jobs, prog, &res.Downloaded)
	}
	layers, rest, err := planRangeLayers(ctx, s, meta, root, need, !opts.NoMaterialize)
	if err != nil {
		return err
	}
	e := &rangeEnv{s: s, r: meta.r, conn: opts.HTTP, batch: batch, prog: prog, missing: map[digest.Digest]bool{}, count: &res.Downloaded}
	if !opts.NoBlockMap {
		e.maps = &blockMaps{r: meta.r, root: root.Digest, listed: func(context.Context) ([]ocispec.Descriptor, error) { return listing() }, note: prog.note}
	}
	for _, b := range need {
		e.missing[b.Digest] = true
	}
	defer func() {
		for _, l := range layers {
			l.discard()
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var c Count
		err := fetchAll(gctx, s, meta, batch, rest, jobs, prog, &c)
		e.countMu.Lock()
		res.Downloaded.Blobs += c.Blobs
		res.Downloaded.Bytes += c.Bytes
		e.countMu.Unlock()
		return err
	})
	g.Go(func() error {
		if err := e.fetchLayers(gctx, layers, jobs); err != nil {
			return fmt.Errorf("%s: %w", meta.r.repo, err)
		}
		return nil
	})
	err = g.Wait()
	res.Ranges, res.WholeLayers = int(e.ranges.Load()), int(e.whole.Load())
	res.Dehydrated, res.Derived = int(e.dehydrated.Load()), int(e.derived.Load())
	if e.maps != nil {
		res.BlockMap = e.maps.used
	}
	return err
}

// fetchAll downloads need, jobs at a time, into temp files of the batch;
// each is checked against its digest and size. Manifests come from meta
// (read and verified during the walk).
func fetchAll(ctx context.Context, s *store.Store, meta *metaFetcher, batch *lockedBatch, need []bundle.Blob, jobs int, prog *progress, count *Count) error {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, b := range need {
		g.Go(func() error {
			desc := b.Descriptor()
			var rc io.ReadCloser
			meta.mu.Lock()
			data, ok := meta.docs[b.Digest]
			meta.mu.Unlock()
			if ok {
				rc = io.NopCloser(bytes.NewReader(data))
			} else {
				var err error
				if rc, err = meta.r.openBlob(gctx, desc); err != nil {
					return err
				}
			}
			defer rc.Close()
			w, err := s.NewWriter(gctx)
			if err != nil {
				return err
			}
			if _, err := io.Copy(w, progReader{rc, prog}); err != nil {
				w.Close()
				return err
			}
			if err := batch.add(gctx, w, desc); err != nil {
				return fmt.Errorf("%s: %w", meta.r.repo, err)
			}
			mu.Lock()
			defer mu.Unlock()
			count.add(b.Size)
			return nil
		})
	}
	return g.Wait()
}

type progReader struct {
	r io.Reader
	p *progress
}

func (p progReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.p.add(int64(n))
	return n, err
}

// pullWhole pulls an image without a blocked form: export reads it from the
// registry (verifying every blob) and writes both forms into the store.
func pullWhole(ctx context.Context, s *store.Store, meta *metaFetcher, root ocispec.Descriptor, res *PullResult, opts PullOptions) error {
	ref := meta.r.ref
	src := &remoteSource{meta: meta, root: root}
	var err error
	if res.StandardSize, err = standardSize(ctx, src, root); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	eo := opts.Export
	eo.Progress, eo.PlainProgress = opts.Progress, opts.PlainProgress
	er, err := image.Export(ctx, s, src, res.Name, eo)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	res.Index, res.Standard = er.Index, er.Standard
	res.Referrers = len(er.Referrers)
	res.Downloaded.Blobs = int(src.blobs.Load())
	res.Outputs, err = bundle.Deliver(ctx, s, bundle.Image{Name: res.Name, Index: er.Index, Standard: er.Standard}, bundle.ApplyOptions{
		Outputs: opts.Outputs, NoMaterialize: true, HydrateProgress: opts.Progress, PlainProgress: opts.PlainProgress,
		Registry: opts.Registry,
	})
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// remoteSource is a registry image as a transport.Source for export, read
// through the pull's connection options.
type remoteSource struct {
	meta  *metaFetcher
	root  ocispec.Descriptor
	blobs atomic.Int64
}

var _ transport.Source = (*remoteSource)(nil)

// Referrers lets export (and CopyReferrers) copy what refers to the image.
func (r *remoteSource) Referrers(ctx context.Context, subject ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	return transport.ListReferrers(ctx, r.meta.r.repo, r.meta.r.opts, subject.Digest)
}

func (r *remoteSource) Resolve(context.Context) (ocispec.Descriptor, error) { return r.root, nil }
func (r *remoteSource) Close() error                                        { return nil }

func (r *remoteSource) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if transport.IsManifest(desc.MediaType) || transport.IsIndex(desc.MediaType) {
		return r.meta.Fetch(ctx, desc)
	}
	r.blobs.Add(1)
	return r.meta.r.openBlob(ctx, desc)
}

// listedSource is a remoteSource whose subjects' referrers were listed
// ahead, at once (prefetchReferrers); others are listed when asked.
type listedSource struct {
	*remoteSource
	mu   sync.Mutex
	done map[digest.Digest]chan struct{}
	refs map[digest.Digest][]ocispec.Descriptor
	errs map[digest.Digest]error
}

func prefetchReferrers(ctx context.Context, src *remoteSource, subjects []digest.Digest, skip bool) *listedSource {
	l := &listedSource{remoteSource: src, done: map[digest.Digest]chan struct{}{}, refs: map[digest.Digest][]ocispec.Descriptor{}, errs: map[digest.Digest]error{}}
	if skip {
		return l
	}
	// One listing of the repository's tags spares asking for each cosign
	// tag of each manifest.
	tagsOnce := sync.OnceValue(func() map[string]bool { return transport.CosignTags(ctx, src.meta.r.repo, src.meta.r.opts) })
	sem := make(chan struct{}, DefaultJobs)
	for _, d := range subjects {
		if _, ok := l.done[d]; ok {
			continue
		}
		ch := make(chan struct{})
		l.done[d] = ch
		go func() {
			defer close(ch)
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				l.mu.Lock()
				l.errs[d] = ctx.Err()
				l.mu.Unlock()
				return
			}
			refs, err := transport.ListReferrersKnown(ctx, src.meta.r.repo, src.meta.r.opts, d, tagsOnce())
			l.mu.Lock()
			l.refs[d], l.errs[d] = refs, err
			l.mu.Unlock()
		}()
	}
	return l
}

// Referrers returns what was listed ahead for subject, else lists it.
func (l *listedSource) Referrers(ctx context.Context, subject ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	ch, ok := l.done[subject.Digest]
	if !ok {
		return l.remoteSource.Referrers(ctx, subject)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refs[subject.Digest], l.errs[subject.Digest]
}
