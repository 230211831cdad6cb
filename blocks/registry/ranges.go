package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	gtransport "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// Range pulls.
//
// A standard layer is its blocked layer's verbatim members with each stub
// replaced by the stub's header member and block member (docs/FORMAT.md
// section 5), so once the blocked layer is read, the offset of every block
// member inside the standard layer is known (layer.Layout). A pull that
// lacks members of a layer therefore reads them as byte ranges of the
// standard layer, which the registry holds anyway: one GET per run of
// adjacent missing members (the smallest gaps between runs merged while the
// bytes they add stay within 1/rangeGapShare of the bytes wanted, plus
// rangeGapFloor), a few of them open at once, instead of one GET per member.
// The stream is cut into members, each checked against its digest.
//
// Unless the pull keeps only the blocked form, the same pass writes the
// standard layer (the ranges' bytes, the verbatim members from the blocked
// layer, the header members rebuilt from the stubs, members the store has),
// checked against the layer's digest, into the same batch: the standard
// layer is not hydrated again after the download. The members it reads are
// then stored as extents of the standard layer (store/extents.go), each
// hashed as it is written, not as files of their own.
//
// A layer the store lacks entirely whose blocks lie among many small files
// is read whole instead, its blocked layer derived from it (wholeLayer,
// fetchWhole).
//
// A registry that answers a Range request with 200 and the whole blob is
// read through that one response (the whole layer is then read, and
// counted); every other answer but a 206 with exactly the Content-Range
// asked for is refused, naming the layer.
//
// Why (docs/REGISTRY.md, "Pull"; bench figures in docs/BENCHMARKS.md): the
// first pull of the bench image made 590 requests, one per block member,
// which is most of its time; the standard layers were then rebuilt,
// reading and hashing every byte once more.

const (
	rangeGapShare = 100      // a layer merges gaps of up to 1% of the bytes it wants ...
	rangeGapFloor = 16 << 10 // ... plus 16 KiB,
	rangePoolMax  = 64 << 10 // and gaps of at most 64 KiB from the pull's pool
	rangeAhead    = 16       // requests of one layer open at once
)

// rangePool returns the gap bytes the layers of a pull share beyond their
// own: 1% of their standard layers (those that start at once take none), at most a tenth of the members
// missing. With each layer's own 1%, a first pull stays within 1.02 times
// the standard image, and an upgrade within 1.2 times what it lacks. A
// layer of small files with blocks among them (an OS layer) has hundreds
// of small gaps: spent there, each 64 KiB or less saves a request, which
// costs the registry and the client more than the bytes.
func rangePool(layers []*rangeLayer) int64 {
	var std, missing int64
	for _, l := range layers {
		std += l.std.Size
		for d := range l.claims {
			missing += l.members[d].Size
		}
	}
	return min(std/100, missing/10)
}

// span is a byte range [start, end) of a standard layer.
type span struct{ start, end int64 }

// runsOf returns the runs of adjacent parts marked in want, and their bytes.
func runsOf(parts []layer.Part, want []bool) ([]span, int64) {
	var runs []span
	var wanted int64
	for i, p := range parts {
		if !want[i] {
			continue
		}
		wanted += p.Size
		if n := len(runs); n > 0 && runs[n-1].end == p.Offset {
			runs[n-1].end = p.Offset + p.Size
			continue
		}
		runs = append(runs, span{p.Offset, p.Offset + p.Size})
	}
	return runs, wanted
}

// planSpans turns each layer's runs into the ranges it reads: runs are
// merged across their smallest gaps first while the gap bytes stay within
// the layer's own budget (1/rangeGapShare of its bytes + rangeGapFloor);
// then the gaps of at most rangePoolMax left in all layers, smallest
// first, while the pool lasts. Spans begin and end on part boundaries.
func planSpans(runs [][]span, wanted []int64, pool int64) [][]span {
	type gapRef struct {
		layer, i int
		size     int64
	}
	merge := make([][]bool, len(runs))
	var rest []gapRef
	for k, rs := range runs {
		if len(rs) < 2 {
			continue
		}
		merge[k] = make([]bool, len(rs)-1)
		var gaps []gapRef
		for i := 0; i+1 < len(rs); i++ {
			gaps = append(gaps, gapRef{k, i, rs[i+1].start - rs[i].end})
		}
		sort.SliceStable(gaps, func(a, b int) bool { return gaps[a].size < gaps[b].size })
		own := wanted[k]/rangeGapShare + rangeGapFloor
		for j, g := range gaps {
			if g.size > own {
				for _, g := range gaps[j:] {
					if g.size <= rangePoolMax {
						rest = append(rest, g)
					}
				}
				break
			}
			own -= g.size
			merge[k][g.i] = true
		}
	}
	sort.SliceStable(rest, func(a, b int) bool { return rest[a].size < rest[b].size })
	for _, g := range rest {
		if g.size > pool {
			break
		}
		pool -= g.size
		merge[g.layer][g.i] = true
	}
	out := make([][]span, len(runs))
	for k, rs := range runs {
		if len(rs) == 0 {
			continue
		}
		o := []span{rs[0]}
		for i := 1; i < len(rs); i++ {
			if merge[k][i-1] {
				o[len(o)-1].end = rs[i].end
			} else {
				o = append(o, rs[i])
			}
		}
		out[k] = o
	}
	return out
}

// rangeLayer is a standard layer with blocks some of whose members the
// store lacks.
type rangeLayer struct {
	std, blocked ocispec.Descriptor
	members      map[digest.Digest]ocispec.Descriptor // the block set's layers
	getBlocked   bool                                 // the store lacks the blocked layer
	assemble     bool                                 // write the standard layer
	claims       map[digest.Digest]bool               // missing members this layer stores
	whole        bool                                 // read the standard layer whole (wholeLayer)

	// Set by prepare.
	bw     *store.BlobWriter // the blocked layer being written, read back
	comp   blocks.Compression
	parts  []layer.Part // nil: too large to lay out (members read one by one)
	want   []bool       // parts read from the registry
	runs   []span       // runs of wanted parts
	wanted int64        // their bytes
	spans  []span       // what fetch reads (planSpans)
	held   int64        // layoutBytes of parts, counted in rangeEnv.held
}

// discard drops what prepare kept.
func (l *rangeLayer) discard() {
	if l.bw != nil {
		l.bw.Close()
		l.bw = nil
	}
}

// lockedBatch is a store batch several downloads add to.
type lockedBatch struct {
	mu sync.Mutex
	b  *store.Batch
}

func (l *lockedBatch) add(ctx context.Context, w *store.BlobWriter, desc ocispec.Descriptor) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Add(ctx, w, desc)
}

// rangeEnv is what the layers of one pull share.
type rangeEnv struct {
	s       *store.Store
	r       *repo
	conn    *transport.HTTP
	batch   *lockedBatch
	prog    *progress
	missing map[digest.Digest]bool // blobs the store lacks; read-only

	countMu sync.Mutex
	count   *Count

	rtOnce sync.Once
	client *http.Client
	rtErr  error

	ranges, whole       atomic.Int64
	dehydrated, derived atomic.Int64 // layers read whole (fetchWhole)
	maps                *blockMaps   // nil: no block maps (PullOptions.NoBlockMap)
	held                atomic.Int64 // bytes of the layouts held (maxLayoutsHeld)
}

// maxLayoutsHeld bounds the memory of the layouts a pull holds at once
// (each layer's is bounded by layer.MaxLayoutParts and MaxLayoutHeaders):
// a layer whose layout does not fit reads its members one by one and is
// hydrated after the pull, as without ranges. A variable for tests.
var maxLayoutsHeld int64 = 256 << 20

// layoutBytes estimates the memory of a layout.
func layoutBytes(parts []layer.Part) int64 {
	n := int64(len(parts)) * 128
	for _, p := range parts {
		n += int64(len(p.Header))
	}
	return n
}

func (e *rangeEnv) counted(n int64) {
	e.countMu.Lock()
	e.count.add(n)
	e.countMu.Unlock()
}

// planRangeLayers finds the layers with blocks of the image whose members
// the store partly lacks (need is what it lacks) and splits need into what
// those layers read through ranges and the rest. Each missing member is
// claimed (stored) by the first layer, in image order, that names it.
func planRangeLayers(ctx context.Context, s *store.Store, meta *metaFetcher, root ocispec.Descriptor, need []bundle.Blob, materialize bool) ([]*rangeLayer, []bundle.Blob, error) {
	missing := map[digest.Digest]bool{}
	for _, b := range need {
		missing[b.Digest] = true
	}
	// The manifests as the walk read them: from the store when it has them.
	pairs, err := layerPairs(ctx, storeFirst{s: s, next: meta}, root)
	if err != nil {
		return nil, nil, err
	}
	var out []*rangeLayer
	claimed := map[digest.Digest]bool{}
	taken := map[digest.Digest]bool{} // blobs of need that range layers read
	for _, l := range pairs {
		rl := &rangeLayer{std: l.std, blocked: l.blocked, members: map[digest.Digest]ocispec.Descriptor{}, claims: map[digest.Digest]bool{}}
		for _, m := range l.members {
			rl.members[m.Digest] = m
			if missing[m.Digest] && !claimed[m.Digest] {
				claimed[m.Digest] = true
				rl.claims[m.Digest] = true
			}
		}
		if len(rl.claims) == 0 {
			continue
		}
		rl.getBlocked = missing[l.blocked.Digest] && !taken[l.blocked.Digest]
		if materialize {
			_, present, err := blobSize(ctx, s, l.std)
			if err != nil {
				return nil, nil, err
			}
			rl.assemble = !present
		}
		rl.whole = wholeLayer(rl, missing, len(l.members))
		for d := range rl.claims {
			taken[d] = true
		}
		if rl.getBlocked {
			taken[l.blocked.Digest] = true
		}
		out = append(out, rl)
	}
	var rest []bundle.Blob
	for _, b := range need {
		if !taken[b.Digest] {
			rest = append(rest, b)
		}
	}
	return out, rest, nil
}

type layerPair struct {
	std, blocked ocispec.Descriptor
	members      []ocispec.Descriptor
}

// layerPairs lists the layers with blocks of the image index root (each
// standard layer once), with their blocked layer and block set, read from
// the manifests the walk read (through meta) and checked as image.Resolve
// does.
func layerPairs(ctx context.Context, meta bundle.Fetcher, root ocispec.Descriptor) ([]layerPair, error) {
	var idx ocispec.Index
	if err := getJSON(ctx, meta, root, &idx); err != nil {
		return nil, err
	}
	x, err := blocks.NewImageIndex(idx)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", root.Digest, err)
	}
	entries := x.StandardEntries()
	if x.StandardIsIndex() {
		var sub ocispec.Index
		if err := getJSON(ctx, meta, x.Standard, &sub); err != nil {
			return nil, fmt.Errorf("standard index: %w", err)
		}
		entries = sub.Manifests
	}
	var out []layerPair
	seen := map[digest.Digest]bool{}
	for _, e := range entries {
		bd, ok := x.BlockedOf(e.Digest)
		if !ok {
			continue
		}
		var sm, bm ocispec.Manifest
		if err := getJSON(ctx, meta, manifestDesc(e), &sm); err != nil {
			return nil, fmt.Errorf("standard manifest: %w", err)
		}
		if err := getJSON(ctx, meta, manifestDesc(bd), &bm); err != nil {
			return nil, fmt.Errorf("blocked manifest: %w", err)
		}
		if err := blocks.CheckBlocked(sm, e.Digest, bm, bd.Digest); err != nil {
			return nil, err
		}
		for i, sl := range sm.Layers {
			bl := bm.Layers[i]
			if sl.Digest == bl.Digest || seen[sl.Digest] {
				continue
			}
			seen[sl.Digest] = true
			set, ok := x.BlockSetOf(bl.Digest)
			if !ok {
				return nil, fmt.Errorf("blocked layer %s (layer %d of %s) has no block set in the index", bl.Digest, i, e.Digest)
			}
			var setm ocispec.Manifest
			if err := getJSON(ctx, meta, manifestDesc(set), &setm); err != nil {
				return nil, fmt.Errorf("block set of layer %s: %w", bl.Digest, err)
			}
			if err := blocks.CheckBlockSet(setm, set.Digest, bl.Digest); err != nil {
				return nil, err
			}
			out = append(out, layerPair{std: plainDesc(sl), blocked: plainDesc(bl), members: setm.Layers})
		}
	}
	return out, nil
}

func manifestDesc(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d.Digest, Size: d.Size}
}

func plainDesc(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// fetchLayers reads what layers lack. Every layer is laid out first (its
// blocked layer read), several at a time, the largest blocked layers first
// (one of many small files takes longest to walk). A layer whose runs of
// missing members merge on its own budget into spans separated only by
// gaps too large for the pool starts reading at once; the others wait for
// every layout, so that the pool goes to the smallest gaps of all (the
// requests it saves). Then jobs layers read at a time.
func (e *rangeEnv) fetchLayers(ctx context.Context, layers []*rangeLayer, jobs int) error {
	g, gctx := errgroup.WithContext(ctx)
	fetching := make(chan struct{}, jobs)
	fetch := func(l *rangeLayer) {
		g.Go(func() error {
			select {
			case fetching <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			defer func() { <-fetching }()
			return l.fetch(gctx, e)
		})
	}
	sort.SliceStable(layers, func(a, b int) bool { return layers[a].blocked.Size > layers[b].blocked.Size })
	preparing := make(chan struct{}, max(jobs, 2))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var later []*rangeLayer
	for _, l := range layers {
		if l.whole {
			fetch(l)
			continue
		}
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			select {
			case preparing <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			err := l.prepare(gctx, e)
			<-preparing
			if err != nil {
				return err
			}
			own := planSpans([][]span{l.runs}, []int64{l.wanted}, 0)[0]
			for i := 1; i < len(own); i++ {
				if own[i].start-own[i-1].end <= rangePoolMax {
					mu.Lock()
					later = append(later, l)
					mu.Unlock()
					return nil
				}
			}
			l.spans = own
			fetch(l)
			return nil
		})
	}
	wg.Wait()
	if gctx.Err() == nil {
		runs, wanted := make([][]span, len(later)), make([]int64, len(later))
		for i, l := range later {
			runs[i], wanted[i] = l.runs, l.wanted
		}
		for i, sp := range planSpans(runs, wanted, rangePool(layers)) {
			later[i].spans = sp
		}
		sort.SliceStable(later, func(a, b int) bool { return later[a].std.Size > later[b].std.Size })
		for _, l := range later {
			fetch(l)
		}
	}
	return g.Wait()
}

// prepare reads the blocked layer (from the registry into the batch's
// writer l.bw if the store lacks it), lays out the standard layer and marks
// the parts to read.
func (l *rangeLayer) prepare(ctx context.Context, e *rangeEnv) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("layer %s: %w", l.std.Digest, err)
		}
	}()
	if l.getBlocked {
		rc, err := e.r.openBlob(ctx, l.blocked)
		if err != nil {
			return err
		}
		defer rc.Close()
		if l.bw, err = e.s.NewWriter(ctx); err != nil {
			return err
		}
		tee := io.TeeReader(progReader{rc, e.prog}, l.bw)
		l.comp, l.parts, err = layer.Layout(ctx, tee, l.std.MediaType)
		if ctx.Err() == nil {
			// Layout reads to the end, where the blob is verified; make
			// sure, finish the blob if Layout gave up, and if the layer did
			// not parse, say whether its bytes were the registry's fault.
			// (A blocked layer that reads right and does not parse is the
			// publisher's fault: that error stands.)
			if _, cerr := io.Copy(io.Discard, tee); cerr != nil {
				err = cerr
			}
		}
		if err != nil && !errors.Is(err, layer.ErrTooLarge) {
			return fmt.Errorf("blocked layer %s: %w", l.blocked.Digest, err)
		}
	} else {
		rc, err := e.s.Fetch(ctx, l.blocked)
		if err != nil {
			return err
		}
		l.comp, l.parts, err = layer.Layout(ctx, rc, l.std.MediaType)
		rc.Close()
		if err != nil && !errors.Is(err, layer.ErrTooLarge) {
			return fmt.Errorf("blocked layer %s: %w", l.blocked.Digest, err)
		}
	}
	if l.parts == nil {
		return nil // too large to lay out: fetch reads the members one by one
	}
	// The parts must tile the standard layer, and name listed members.
	var total int64
	for _, p := range l.parts {
		if p.Kind == layer.PartMember {
			if m, ok := l.members[p.Member]; !ok || m.Size != p.Size {
				return fmt.Errorf("blocked layer %s: member %s (%d bytes) at offset %d is %w", l.blocked.Digest, p.Member, p.Size, p.Offset, layer.ErrNotListed)
			}
		}
		total += p.Size
	}
	if total != l.std.Size {
		return fmt.Errorf("blocked layer %s lays out a standard layer of %d bytes, not %d: %w", l.blocked.Digest, total, l.std.Size, layer.ErrMismatch)
	}
	l.want = make([]bool, len(l.parts))
	planned := map[digest.Digest]bool{}
	for i, p := range l.parts {
		if p.Kind != layer.PartMember || !e.missing[p.Member] {
			continue
		}
		// Assembling needs every occurrence of a missing member; else only
		// the first of those this layer stores.
		l.want[i] = l.assemble || (l.claims[p.Member] && !planned[p.Member])
		planned[p.Member] = true
	}
	if l.held = layoutBytes(l.parts); e.held.Add(l.held) > maxLayoutsHeld {
		e.held.Add(-l.held)
		l.parts, l.want, l.held = nil, nil, 0
		return nil
	}
	l.runs, l.wanted = runsOf(l.parts, l.want)
	return nil
}

// fetch reads l.spans and cuts them into the members l claims and, when
// assembling, the standard layer; everything goes into the batch checked
// against its digest, the blocked layer last.
func (l *rangeLayer) fetch(ctx context.Context, e *rangeEnv) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("layer %s: %w", l.std.Digest, err)
		}
	}()
	if l.whole {
		return l.fetchWhole(ctx, e)
	}
	if l.parts == nil {
		// Too many stubs to hold their layout: the members one by one,
		// and the standard layer hydrated after the pull as before.
		return l.plain(ctx, e)
	}
	defer func() {
		e.held.Add(-l.held)
		l.parts, l.want, l.held = nil, nil, 0
	}()
	comp, parts, bw := l.comp, l.parts, l.bw
	sr := &spanReader{e: e, std: l.std, spans: l.spans}
	defer sr.close()

	var std *store.BlobWriter
	if l.assemble {
		if std, err = e.s.NewWriter(ctx); err != nil {
			return err
		}
		defer std.Close()
	}
	var blockedSrc *forwardReader
	stored := map[digest.Digest]bool{}
	for _, p := range parts {
		if sr.covers(p) {
			claim := p.Kind == layer.PartMember && l.claims[p.Member] && !stored[p.Member]
			if claim && std != nil {
				// The member is stored as an extent of the standard layer
				// (store/extents.go): written once, hashed on its own.
				if err := std.StartExtent(); err != nil {
					return err
				}
				if err := sr.read(ctx, std, p.Offset, p.Size); err != nil {
					return err
				}
				if err := std.EndExtent(l.members[p.Member]); err != nil {
					return fmt.Errorf("block member at offset %d of the standard layer: %w", p.Offset, err)
				}
				stored[p.Member] = true
				e.counted(p.Size)
				continue
			}
			var dst []io.Writer
			if std != nil {
				dst = append(dst, std)
			}
			var mw *store.BlobWriter
			if claim {
				if mw, err = e.s.NewWriter(ctx); err != nil {
					return err
				}
				dst = append(dst, mw)
			}
			var w io.Writer = io.Discard
			if len(dst) > 0 {
				w = io.MultiWriter(dst...)
			}
			if err := sr.read(ctx, w, p.Offset, p.Size); err != nil {
				if mw != nil {
					mw.Close()
				}
				return err
			}
			if mw != nil {
				if err := e.batch.add(ctx, mw, l.members[p.Member]); err != nil {
					return fmt.Errorf("block member at offset %d of the standard layer: %w", p.Offset, err)
				}
				stored[p.Member] = true
				e.counted(p.Size)
			}
			continue
		}
		if std == nil {
			continue
		}
		switch p.Kind {
		case layer.PartVerbatim:
			if blockedSrc == nil {
				if blockedSrc, err = l.openBlocked(ctx, e, bw); err != nil {
					return err
				}
				defer blockedSrc.Close()
			}
			if err := blockedSrc.copyAt(std, p.BlockedOffset, p.Size); err != nil {
				return fmt.Errorf("blocked layer %s: %w", l.blocked.Digest, err)
			}
		case layer.PartHeader:
			if err := layer.WriteHeaderMember(std, comp, p.Header); err != nil {
				return err
			}
		case layer.PartMember:
			if e.missing[p.Member] {
				return fmt.Errorf("member %s at offset %d is neither in the store nor read", p.Member, p.Offset)
			}
			if err := copyStored(ctx, e.s, std, l.members[p.Member]); err != nil {
				return err
			}
		}
	}
	if err := sr.finish(); err != nil {
		return err
	}
	// A member the block set lists but no stub names: read on its own.
	for d := range l.claims {
		if !stored[d] {
			if err := fetchOne(ctx, e, l.members[d]); err != nil {
				return err
			}
		}
	}
	if std != nil {
		if err := e.batch.add(ctx, std, l.std); err != nil {
			return fmt.Errorf("standard layer assembled from blocked layer %s and the registry's bytes: %w", l.blocked.Digest, err)
		}
	}
	if bw != nil {
		l.bw = nil
		if err := e.batch.add(ctx, bw, l.blocked); err != nil {
			return err
		}
		e.counted(l.blocked.Size)
	}
	return nil
}

// plain reads the blocked layer's members one by one (the blocked layer,
// if being written, is in *bw) and leaves the standard layer to hydrate.
func (l *rangeLayer) plain(ctx context.Context, e *rangeEnv) error {
	for d := range l.claims {
		if err := fetchOne(ctx, e, l.members[d]); err != nil {
			return err
		}
	}
	if w := l.bw; w != nil {
		l.bw = nil
		if err := e.batch.add(ctx, w, l.blocked); err != nil {
			return err
		}
		e.counted(l.blocked.Size)
	}
	return nil
}

// openBlocked opens the blocked layer to copy verbatim members from: the
// copy being written (bw), or the store's.
func (l *rangeLayer) openBlocked(ctx context.Context, e *rangeEnv, bw *store.BlobWriter) (*forwardReader, error) {
	if bw != nil {
		return &forwardReader{r: io.NewSectionReader(bw, 0, l.blocked.Size)}, nil
	}
	rc, err := e.s.Fetch(ctx, l.blocked)
	if err != nil {
		return nil, err
	}
	return &forwardReader{r: rc, c: rc}, nil
}

// forwardReader copies ranges of a stream at increasing offsets.
type forwardReader struct {
	buf []byte
	r   io.Reader
	c   io.Closer
	pos int64
}

func (f *forwardReader) copyAt(w io.Writer, off, n int64) error {
	if off < f.pos {
		return fmt.Errorf("offset %d already passed (%d)", off, f.pos)
	}
	if _, err := io.CopyN(io.Discard, f.r, off-f.pos); err != nil {
		return fmt.Errorf("offset %d: %w", off, err)
	}
	if f.buf == nil {
		f.buf = make([]byte, copyChunk)
	}
	if _, err := io.CopyBuffer(w, io.LimitReader(f.r, n), f.buf); err != nil {
		return fmt.Errorf("%d bytes at offset %d: %w", n, off, err)
	}
	f.pos = off + n
	return nil
}

func (f *forwardReader) Close() error {
	if f.c != nil {
		return f.c.Close()
	}
	return nil
}

// copyStored copies the stored blob desc to w. Its size is checked here and
// its bytes by the digest of the layer written.
func copyStored(ctx context.Context, s *store.Store, w io.Writer, desc ocispec.Descriptor) error {
	rc, err := s.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.Copy(w, rc)
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if n != desc.Size {
		return fmt.Errorf("blob %s: %d bytes, want %d: %w", desc.Digest, n, desc.Size, store.ErrSizeMismatch)
	}
	return nil
}

// fetchOne downloads the blob desc whole into the batch.
func fetchOne(ctx context.Context, e *rangeEnv, desc ocispec.Descriptor) error {
	rc, err := e.r.openBlob(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	w, err := e.s.NewWriter(ctx)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, progReader{rc, e.prog}); err != nil {
		w.Close()
		return err
	}
	if err := e.batch.add(ctx, w, desc); err != nil {
		return err
	}
	e.counted(desc.Size)
	return nil
}

// httpClient is the pull's connection for Range GETs, authenticated once.
func (e *rangeEnv) httpClient(ctx context.Context) (*http.Client, error) {
	e.rtOnce.Do(func() {
		rt, err := e.conn.RoundTripper(ctx, e.r.repo)
		if err != nil {
			e.rtErr = err
			return
		}
		e.client = &http.Client{Transport: rt}
	})
	return e.client, e.rtErr
}

// spanReader reads the spans of one standard layer in order, with up to
// rangeAhead requests open at once, or everything from one whole response
// if the registry answered a Range request with the whole blob.
type spanReader struct {
	e     *rangeEnv
	std   ocispec.Descriptor
	spans []span

	cover   int // first span that may cover the next part
	next    int // next span to request
	pending []chan rangeResp

	body     io.ReadCloser // the response being read
	pos, end int64         // layer offsets of body's next byte and end
	whole    bool          // body is the whole blob
	started  bool
	buf      []byte
}

type rangeResp struct {
	body  io.ReadCloser
	whole bool
	err   error
}

// covers says whether part p is read from the registry. Parts are asked for
// in order.
func (r *spanReader) covers(p layer.Part) bool {
	if r.whole {
		return true
	}
	for r.cover < len(r.spans) && r.spans[r.cover].end <= p.Offset {
		r.cover++
	}
	return r.cover < len(r.spans) && r.spans[r.cover].start <= p.Offset
}

// read copies the n bytes at layer offset off to w; off is where the
// current span or whole body is, or the start of the next span.
func (r *spanReader) read(ctx context.Context, w io.Writer, off, n int64) error {
	if r.body == nil || (!r.whole && r.pos == r.end) {
		if err := r.advance(ctx); err != nil {
			return err
		}
	}
	if r.whole && off > r.pos {
		if err := r.copy(io.Discard, off-r.pos); err != nil {
			return err
		}
	}
	if off != r.pos || off+n > r.end {
		return fmt.Errorf("blob %s: bytes %d-%d asked outside the range read (%d-%d)", r.std.Digest, off, off+n, r.pos, r.end)
	}
	return r.copy(w, n)
}

// copy copies n bytes of the body to w in writes of up to copyChunk bytes
// (the store's writers hash large writes on a goroutine of their own).
func (r *spanReader) copy(w io.Writer, n int64) error {
	if r.buf == nil {
		r.buf = make([]byte, copyChunk)
	}
	for n > 0 {
		b := r.buf[:min(n, int64(len(r.buf)))]
		k, err := io.ReadFull(r.body, b)
		r.pos += int64(k)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("blob %s: the registry's response ends at offset %d, before %d: %w", r.std.Digest, r.pos, r.end, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return fmt.Errorf("blob %s: at offset %d: %w", r.std.Digest, r.pos, err)
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		n -= int64(k)
	}
	return nil
}

// copyChunk is the size of the writes of a range pull.
const copyChunk = 1 << 20

// advance ends the current span's response and takes the next one.
func (r *spanReader) advance(ctx context.Context) error {
	if err := r.endBody(); err != nil {
		return err
	}
	if r.next >= len(r.spans) && len(r.pending) == 0 {
		return fmt.Errorf("blob %s: read past the last range", r.std.Digest)
	}
	if !r.started {
		// The first request alone: if the registry ignores Range, it is
		// the only whole blob it sends.
		r.started = true
		r.request(ctx)
	}
	resp := <-r.pending[0]
	r.pending = r.pending[1:]
	sp := r.spans[r.next-len(r.pending)-1]
	if resp.err != nil {
		return resp.err
	}
	r.body = resp.body
	if resp.whole {
		r.whole, r.pos, r.end = true, 0, r.std.Size
		r.e.whole.Add(1)
		r.dropPending()
		return nil
	}
	r.pos, r.end = sp.start, sp.end
	for len(r.pending) < rangeAhead && r.next < len(r.spans) {
		r.request(ctx)
	}
	return nil
}

// request starts the GET of the next span.
func (r *spanReader) request(ctx context.Context) {
	sp := r.spans[r.next]
	r.next++
	ch := make(chan rangeResp, 1)
	r.pending = append(r.pending, ch)
	r.e.ranges.Add(1)
	go func() {
		body, whole, err := r.e.getRange(ctx, r.std, sp)
		ch <- rangeResp{body, whole, err}
	}()
}

// endBody closes the current response, after checking that a range
// response holds nothing past the range.
func (r *spanReader) endBody() error {
	if r.body == nil {
		return nil
	}
	b := r.body
	r.body = nil
	defer b.Close()
	if r.whole {
		if r.pos < r.end {
			// Read (and count) what the registry sent, to check its size.
			if _, err := io.CopyN(io.Discard, b, r.end-r.pos); err != nil {
				return fmt.Errorf("blob %s: the registry's response ends before its %d bytes: %w", r.std.Digest, r.end, io.ErrUnexpectedEOF)
			}
			r.pos = r.end
		}
	} else if r.pos != r.end {
		return fmt.Errorf("blob %s: range %d-%d left unread at %d", r.std.Digest, r.pos, r.end, r.pos)
	}
	var one [1]byte
	if n, _ := io.ReadFull(b, one[:]); n > 0 {
		return fmt.Errorf("blob %s: the registry's response goes on past byte %d: %w", r.std.Digest, r.end, store.ErrSizeMismatch)
	}
	return nil
}

// finish checks the last response, and that every range was read.
func (r *spanReader) finish() error {
	if err := r.endBody(); err != nil {
		return err
	}
	if !r.whole && (r.next < len(r.spans) || len(r.pending) > 0) {
		return fmt.Errorf("blob %s: %d of %d ranges not read", r.std.Digest, len(r.spans)-r.next+len(r.pending), len(r.spans))
	}
	return nil
}

// dropPending closes the responses requested ahead.
func (r *spanReader) dropPending() {
	for _, ch := range r.pending {
		if resp := <-ch; resp.body != nil {
			resp.body.Close()
		}
	}
	r.pending = nil
	r.next = len(r.spans)
}

func (r *spanReader) close() {
	r.dropPending()
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
}

// getRange sends GET /v2/<repo>/blobs/<digest> with Range: bytes=a-b for
// span sp of blob desc, and checks the answer: a 206 must carry exactly
// that Content-Range (and, if it says, that length); a 200 is the whole
// blob (whole), of its size if it says. The body is counted as downloaded.
func (e *rangeEnv) getRange(ctx context.Context, desc ocispec.Descriptor, sp span) (io.ReadCloser, bool, error) {
	c, err := e.httpClient(ctx)
	if err != nil {
		return nil, false, err
	}
	reg := e.r.repo.Registry
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", reg.Scheme(), reg.RegistryStr(), e.r.repo.RepositoryStr(), desc.Digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", sp.start, sp.end-1))
	resp, err := c.Do(req)
	if err != nil {
		return nil, false, fmt.Errorf("%s: blob %s: %w", e.r.repo, desc.Digest, err)
	}
	fail := func(format string, a ...any) (io.ReadCloser, bool, error) {
		resp.Body.Close()
		return nil, false, fmt.Errorf("%s: blob %s: range %d-%d: %s", e.r.repo, desc.Digest, sp.start, sp.end-1, fmt.Sprintf(format, a...))
	}
	body := &countedBody{r: &countReader{r: resp.Body, n: &e.r.down}, c: resp.Body, p: e.prog}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		if err := checkContentRange(cr, sp, desc.Size); err != nil {
			return fail("%v", err)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != sp.end-sp.start {
			return fail("Content-Length %d for %d bytes", resp.ContentLength, sp.end-sp.start)
		}
		return body, false, nil
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != desc.Size {
			return fail("the whole blob, of %d bytes, is %d", resp.ContentLength, desc.Size)
		}
		return body, true, nil
	}
	err = gtransport.CheckError(resp, http.StatusPartialContent)
	resp.Body.Close()
	return nil, false, fmt.Errorf("%s: blob %s: range %d-%d: %w", e.r.repo, desc.Digest, sp.start, sp.end-1, explain(err))
}

// getWhole GETs the blob desc for a store writer, which checks it against
// desc (size and digest, naming the blob) when it is added to the batch:
// it is not hashed on the way too (go-containerregistry's reader would
// hash it once more, and a first pull hashed every byte three times). The
// body is cut at desc.Size+1 bytes.
func (e *rangeEnv) getWhole(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	c, err := e.httpClient(ctx)
	if err != nil {
		return nil, err
	}
	reg := e.r.repo.Registry
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", reg.Scheme(), reg.RegistryStr(), e.r.repo.RepositoryStr(), desc.Digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", e.r.repo, desc.Digest, err)
	}
	if resp.StatusCode != http.StatusOK {
		err = gtransport.CheckError(resp, http.StatusOK)
		resp.Body.Close()
		return nil, fmt.Errorf("%s: blob %s: %w", e.r.repo, desc.Digest, explain(err))
	}
	if resp.ContentLength >= 0 && resp.ContentLength != desc.Size {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: blob %s: %d bytes, the manifest says %d", e.r.repo, desc.Digest, resp.ContentLength, desc.Size)
	}
	return &countedBody{r: &countReader{r: io.LimitReader(resp.Body, desc.Size+1), n: &e.r.down}, c: resp.Body, p: e.prog}, nil
}

// countedBody counts a response body as downloaded and as progress.
type countedBody struct {
	r io.Reader
	c io.Closer
	p *progress
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.p.add(int64(n))
	return n, err
}

func (b *countedBody) Close() error { return b.c.Close() }

// checkContentRange checks a 206's Content-Range against the span asked
// for: "bytes a-b/size" (or "/*") with exactly that a and b.
func checkContentRange(v string, sp span, size int64) error {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return fmt.Errorf("Content-Range %q is not a byte range", v)
	}
	rng, total, ok := strings.Cut(rest, "/")
	if !ok {
		return fmt.Errorf("Content-Range %q has no length", v)
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return fmt.Errorf("Content-Range %q is not a range", v)
	}
	first, ok1 := decimal(a)
	last, ok2 := decimal(b)
	if !ok1 || !ok2 || first != sp.start || last != sp.end-1 {
		return fmt.Errorf("Content-Range %q, asked bytes %d-%d", v, sp.start, sp.end-1)
	}
	if total != "*" {
		if n, ok := decimal(total); !ok || n != size {
			return fmt.Errorf("Content-Range %q for a blob of %d bytes", v, size)
		}
	}
	return nil
}

// decimal parses a non-empty run of ASCII digits (no sign, no spaces).
func decimal(s string) (int64, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// wholeShare: a layer whose blocked layer is at least 1/wholeShare of its
// standard layer (and wholeMin bytes) is mostly verbatim members, small
// files with its blocks among them; see wholeLayer.
const (
	wholeShare = 10
	wholeMin   = 1 << 20
)

// wholeLayer says whether the pull reads l's standard layer whole and
// derives its blocked layer from it (layer.Dehydrate) rather than reading
// the blocked layer and Range GETs of the members: when the store lacks
// the layer's standard layer, its blocked layer and every one of its
// members (nothing it reads is then already here), the layer is gzip, and
// its blocks lie among many small files. Such a layer (the bench image's
// system layer) needs a Range GET per run of members, about a hundred, and
// a registry spends on a request what it spends streaming megabytes
// (docs/BENCHMARKS.md, "First pull"); read whole, it is one request and no
// more bytes (the blocked layer's verbatim members are the standard
// layer's, read once). A layer of few large blocks (a JDK, jars) keeps
// ranges: its blocked layer is small and its members one or two runs, and
// dehydrating would inflate every block.
func wholeLayer(l *rangeLayer, missing map[digest.Digest]bool, members int) bool {
	if !l.assemble || !l.getBlocked || !strings.Contains(l.std.MediaType, "gzip") {
		return false
	}
	if len(l.claims) != members || len(l.members) != members {
		return false
	}
	for d := range l.members {
		if !missing[d] {
			return false
		}
	}
	return l.blocked.Size >= wholeMin && l.blocked.Size*wholeShare >= l.std.Size
}

// dehydrate is layer.Dehydrate; a variable so that tests can make it miss.
var dehydrate = layer.Dehydrate

// fetchWhole reads the standard layer whole into the batch, then
// dehydrates it into its blocked layer on every core (checked against the
// blocked layer's digest; if it differs, a layer another writer made, the
// blocked layer is read from the registry). The members the layer claims
// become extents of the standard layer, each hashed there by the store.
func (l *rangeLayer) fetchWhole(ctx context.Context, e *rangeEnv) (err error) {
	rc, err := e.getWhole(ctx, l.std)
	if err != nil {
		return err
	}
	defer rc.Close()
	sw, err := e.s.NewWriter(ctx)
	if err != nil {
		return err
	}
	defer sw.Close()
	bw, err := e.s.NewWriter(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if bw != nil {
			bw.Close()
		}
	}()
	// The layer is dehydrated, on every core, as it arrives.
	follow := sw.Follow()
	type result struct {
		parts []layer.Part
		err   error
	}
	done := make(chan result, 1)
	go func() {
		// The layer's block map, if the registry has one, spares inflating
		// its blocks; read while the layer downloads.
		var known map[digest.Digest]digest.Digest
		if e.maps != nil {
			known = e.maps.layer(ctx, l.std.Digest)
		}
		parts, err := dehydrate(ctx, follow, l.std.Size, bw, layer.DehydrateOptions{Workers: runtime.GOMAXPROCS(0), Known: known})
		done <- result{parts, err}
	}()
	// Large writes: the store hashes them on a goroutine of its own.
	_, cerr := io.CopyBuffer(sw, rc, make([]byte, 1<<20))
	follow.End(cerr)
	dr := <-done
	if cerr != nil {
		return fmt.Errorf("standard layer %s: %w", l.std.Digest, cerr)
	}
	e.counted(l.std.Size)
	// The registry's bytes are checked before anything derived from them
	// is used (and again when the writer joins the batch).
	if got := sw.Digest(); sw.Size() != l.std.Size || got != l.std.Digest {
		return fmt.Errorf("standard layer %s: %d bytes hashing to %s: %w", l.std.Digest, sw.Size(), got, store.ErrDigestMismatch)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	parts, derr := dr.parts, dr.err
	derived := derr == nil && bw.Size() == l.blocked.Size && bw.Digest() == l.blocked.Digest
	e.dehydrated.Add(1)
	if derived {
		e.derived.Add(1)
	} else {
		// Not the blocked layer export writes from this standard layer:
		// read it, and lay it out, as the other layers do.
		bw.Close()
		if bw, err = e.s.NewWriter(ctx); err != nil {
			return err
		}
		brc, err := e.r.openBlob(ctx, l.blocked)
		if err != nil {
			return err
		}
		defer brc.Close()
		_, parts, err = layer.Layout(ctx, io.TeeReader(progReader{brc, e.prog}, bw), l.std.MediaType)
		if err == nil {
			_, err = io.Copy(io.Discard, io.TeeReader(brc, bw))
		}
		if err != nil {
			return fmt.Errorf("blocked layer %s: %w", l.blocked.Digest, err)
		}
	}
	var total int64
	stored := map[digest.Digest]bool{}
	for _, p := range parts {
		total += p.Size
		if p.Kind != layer.PartMember {
			continue
		}
		m, ok := l.members[p.Member]
		if !ok || m.Size != p.Size {
			return fmt.Errorf("blocked layer %s: member %s (%d bytes) at offset %d is %w", l.blocked.Digest, p.Member, p.Size, p.Offset, layer.ErrNotListed)
		}
		if l.claims[p.Member] && !stored[p.Member] {
			if err := sw.AddExtent(ctx, m, p.Offset); err != nil {
				return fmt.Errorf("block member at offset %d of the standard layer %s: %w", p.Offset, l.std.Digest, err)
			}
			stored[p.Member] = true
		}
	}
	if total != l.std.Size {
		return fmt.Errorf("blocked layer %s lays out a standard layer of %d bytes, not %d: %w", l.blocked.Digest, total, l.std.Size, layer.ErrMismatch)
	}
	// A member the block set lists but no stub names: read on its own.
	for d := range l.claims {
		if !stored[d] {
			if err := fetchOne(ctx, e, l.members[d]); err != nil {
				return err
			}
		}
	}
	if err := e.batch.add(ctx, sw, l.std); err != nil {
		return fmt.Errorf("standard layer %s: %w", l.std.Digest, err)
	}
	w := bw
	bw = nil
	if err := e.batch.add(ctx, w, l.blocked); err != nil {
		return fmt.Errorf("blocked layer %s: %w", l.blocked.Digest, err)
	}
	if !derived {
		e.counted(l.blocked.Size)
	}
	return nil
}
