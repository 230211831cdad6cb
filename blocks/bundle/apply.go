package bundle

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// ApplyOptions say where apply writes the images besides the store.
type ApplyOptions struct {
	// Outputs are sinks (oci:DIR[:REF], oci-archive:FILE[:REF],
	// docker://REF) each image is written to after hydration. "{name}" in an
	// output is replaced by the image name; with several images every
	// output must contain it.
	Outputs []string

	// Progress, if set, is called as the verify and ingest passes advance.
	Progress ProgressFunc

	// NoMaterialize skips rebuilding the standard layers inside the store
	// (image.Materialize): the store then holds only the blocked form, which
	// is enough to hydrate the image on demand (hydrate, outputs), at half
	// the disk space. Outputs are still checked against the standard digest.
	NoMaterialize bool

	// HydrateProgress and PlainProgress are passed to image.Hydrate for
	// each output.
	HydrateProgress io.Writer
	PlainProgress   bool

	// Registry says how docker:// outputs are reached (credentials, TLS,
	// hosts.toml), for the images and for their signatures and attestations
	// (transport.Registry.PushReferrers); the zero value is the default.
	Registry transport.Registry

	// IngestOnly stops after step 3: the blobs are checked and ingested,
	// but no image is tagged, no referrer recorded and nothing hydrated or
	// written to Outputs. It is for a caller that tags and delivers the
	// image itself, under its own name (registry pull with a delta bundle,
	// which holds a lease across both).
	IngestOnly bool
}

// ApplyResult says what apply did.
type ApplyResult struct {
	Images   []AppliedImage `json:"images"`
	Ingested Count          `json:"ingested"` // blobs written to the store by this run
	Present  Count          `json:"present"`  // shipped blobs the store already had
	Required Count          `json:"required"` // prerequisites found in the store
	Duration time.Duration  `json:"durationNs"`
}

// AppliedImage is one image that apply tagged and hydrated.
type AppliedImage struct {
	Image
	Outputs []string `json:"outputs,omitempty"`
}

// MissingError lists the prerequisites a target store lacks.
type MissingError struct {
	Missing []Blob
}

func (e *MissingError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the store lacks %d blob(s) this bundle requires (was the base image applied to this store?):", len(e.Missing))
	manifests := false
	for _, m := range e.Missing {
		fmt.Fprintf(&b, "\n  %s", m)
		manifests = manifests || m.Kind.isManifest()
	}
	if manifests {
		b.WriteString("\n(and whatever the missing indexes and manifests list)")
	}
	return b.String()
}

// Apply checks the bundle at path against s and, only if every check
// passes, ingests its blobs, tags its images and hydrates them:
//
//  1. it reads the header and the manifests at the front of the bundle and
//     walks each image: every blob an image needs must be in the bundle or
//     in s with its size (else a *MissingError listing them all), and every
//     blob in the bundle must belong to an image;
//  2. it reads the rest of the bundle, hashing every blob;
//  3. it ingests the blobs (each verified again, temp file + rename);
//  4. it tags each image, hydrates it into s and writes it to the outputs.
//
// A failure in 1 or 2 leaves s unchanged. Apply is idempotent, and may be
// re-run after being killed at any point: blobs already ingested are kept,
// and no blob is ever visible under its name before it is complete.
func Apply(ctx context.Context, s *store.Store, path string, opts ApplyOptions) (*ApplyResult, error) {
	start := time.Now()
	res := &ApplyResult{}
	// The lease keeps gc from sweeping the prerequisites found present and
	// the blobs ingested until the images are tagged and hydrated.
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", path, err)
	}
	defer release()
	// The check pass rebuilds patched blobs into temp files of this batch,
	// which the ingest pass adopts (rebuild.go); nothing is visible before
	// the batch commits.
	batch := s.NewBatch()
	h, rb, err := verifyBundle(ctx, s, path, res, opts, batch)
	if err != nil {
		batch.Discard()
		return nil, err
	}
	if err := ingest(ctx, s, path, h, res, opts.Progress, batch, rb); err != nil {
		return nil, err
	}
	if opts.IngestOnly {
		res.Duration = time.Since(start)
		return res, nil
	}
	for _, im := range h.Images {
		if err := s.Tag(ctx, im.Name, im.Index); err != nil {
			return nil, fmt.Errorf("tag %s: %w", im.Name, err)
		}
		for _, r := range im.Referrers {
			if err := s.AddReferrer(ctx, r.Subject, r.Descriptor); err != nil {
				return nil, fmt.Errorf("image %s: %w", im.Name, err)
			}
		}
	}
	for _, im := range h.Images {
		outs, err := hydrate(ctx, s, im, opts)
		if err != nil {
			return nil, err
		}
		res.Images = append(res.Images, AppliedImage{Image: im, Outputs: outs})
	}
	res.Duration = time.Since(start)
	return res, nil
}

// blobSize returns the size of the blob d in s, if present.
func blobSize(ctx context.Context, s *store.Store, d digest.Digest) (int64, bool, error) {
	ok, err := s.Exists(ctx, d)
	if err != nil || !ok {
		return 0, false, err
	}
	return s.BlobSize(ctx, d)
}

// verifyBundle is apply's first pass; nothing it writes is visible. It
// reads the manifests at the front of the bundle, checks the prerequisites
// and the closures (step 1 of Apply), then reads and hashes every other
// blob, and rebuilds each patched blob the store lacks into a temp file of
// batch (checked against its digest there), on rebuildWorkers goroutines.
// It returns only once every rebuild has ended.
func verifyBundle(ctx context.Context, s *store.Store, path string, res *ApplyResult, opts ApplyOptions, batch *store.Batch) (_ *Header, _ *rebuilder, err error) {
	r, err := Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	h := r.Header
	// One deflate budget for the whole apply: block deltas take theirs up
	// front (Header.check has bounded it), member patches as they decode.
	budget := newDeflateBudget()
	if err := budget.take(h.deltaDeflate()); err != nil {
		return nil, nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	rb := newRebuilder(ctx, s, path, batch, budget)
	defer func() {
		if werr := rb.wait(); err == nil && werr != nil {
			err = werr
		}
	}()
	return verifyBlobs(ctx, s, path, r, res, opts, rb)
}

// verifyBlobs is verifyBundle once the bundle is open.
func verifyBlobs(ctx context.Context, s *store.Store, path string, r *Reader, res *ApplyResult, opts ApplyOptions, rb *rebuilder) (*Header, *rebuilder, error) {
	h := r.Header
	if len(h.Images) > 1 {
		for _, o := range opts.Outputs {
			if !strings.Contains(o, "{name}") {
				return nil, nil, fmt.Errorf("output %q: the bundle holds %d images; put {name} in the output to write each", o, len(h.Images))
			}
		}
	}
	// Every output is expanded for every image now, so a name that would
	// leave the output directory fails before anything is written.
	for _, im := range h.Images {
		for _, o := range opts.Outputs {
			if _, err := OutputFor(o, im.Name); err != nil {
				return nil, nil, fmt.Errorf("bundle %s: %w", path, err)
			}
		}
	}
	meta := memFetcher{blobs: map[digest.Digest][]byte{}, next: s}
	budget := rb.budget
	var done int64
	shipped := h.Shipped()
	report := func(n int64) {
		done += n
		if opts.Progress != nil {
			opts.Progress("verify", done, shipped)
		}
	}
	// The manifests come first (the header's order is checked); keep them.
	var held int64
	for _, b := range h.Blobs {
		if !b.Kind.isManifest() {
			break
		}
		if b.Size > maxJSONSize || held+b.Size > maxMetaTotal {
			return nil, nil, fmt.Errorf("bundle %s: manifest %s: too large", path, b)
		}
		got, rd, err := r.Next()
		if err != nil {
			return nil, nil, err
		}
		if got.Patch != nil {
			// A patched block set: rebuild it from its base, if the
			// store has the base; if not, the walk reports the base.
			if _, ok, err := blobSize(ctx, s, got.Patch.Base.Digest); err != nil {
				return nil, nil, err
			} else if !ok {
				if _, err := io.Copy(io.Discard, rd); err != nil {
					return nil, nil, err
				}
				report(got.Patch.Size)
				continue
			}
			if rd, err = unpatched(ctx, s, got, rd, budget); err != nil {
				return nil, nil, err
			}
		}
		data, err := io.ReadAll(rd)
		if err != nil {
			return nil, nil, err
		}
		meta.blobs[got.Digest] = data
		held += got.Size
		report(got.entry().Size)
	}
	if err := checkClosures(ctx, s, path, h, meta, res); err != nil {
		return nil, nil, err
	}
	buf := make([]byte, 1<<20)
	// Blobs shipped whole are hashed on a second core while the next bytes
	// are read.
	dg := store.NewDigester()
	defer dg.Close()
	for {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		b, rd, err := r.nextRaw()
		if err == io.EOF {
			return h, rb, rb.wait()
		}
		if err != nil {
			return nil, nil, err
		}
		if b.Derive != nil {
			if err := rb.derive(b, rd); err != nil {
				return nil, nil, err
			}
			report(b.Size)
			continue
		}
		if b.Patch == nil {
			// The tar reader has checked the entry's size.
			dg.Reset()
			if _, err := io.CopyBuffer(dg, rd, buf); err != nil {
				return nil, nil, err
			}
			if got := dg.Digest(); got != b.Digest {
				return nil, nil, fmt.Errorf("bundle %s: blob %s: content hashes to %s: %w", path, b, got, store.ErrDigestMismatch)
			}
			report(b.Size)
			continue
		}
		if size, ok, err := blobSize(ctx, s, b.Digest); err != nil {
			return nil, nil, err
		} else if ok && size == b.Size {
			// The store holds the blob (an apply run again): nothing to
			// rebuild; the patch entry is still checked.
			if _, err := io.CopyBuffer(io.Discard, store.VerifyReader(rd, b.entry()), buf); err != nil {
				return nil, nil, err
			}
			report(b.entry().Size)
			continue
		}
		if err := rb.submit(b, rd, buf); err != nil {
			return nil, nil, err
		}
		report(b.entry().Size)
	}
}

// unpatched returns a reader of blob b rebuilt from its patch (read from
// rd) and its base in s, verified against b's digest and size at EOF.
func unpatched(ctx context.Context, s *store.Store, b Blob, rd io.Reader, budget *deflateBudget) (io.Reader, error) {
	out, closeDec, err := openPatched(ctx, s, b, rd, budget)
	if err != nil {
		return nil, err
	}
	return &closeAtEOF{r: store.VerifyReader(out, b.Descriptor()), close: closeDec}, nil
}

// closeAtEOF calls close once the reader returns an error or EOF.
type closeAtEOF struct {
	r     io.Reader
	close func()
}

func (c *closeAtEOF) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && c.close != nil {
		c.close()
		c.close = nil
	}
	return n, err
}

// checkClosures walks every image of h, reading manifests from meta (the
// bundle's) or s, and checks that what each needs is shipped or in s, and
// that everything shipped is needed.
func checkClosures(ctx context.Context, s *store.Store, path string, h *Header, meta memFetcher, res *ApplyResult) error {
	shipped := map[digest.Digest]Blob{}
	for _, b := range h.Blobs {
		shipped[b.Digest] = b
	}
	// Blobs derived from standard layers shipped in place of their blocked
	// form (Blob.Derive): the blocked layer and its block set come from the
	// bundle too, and the block set's members with them, so the walk, which
	// cannot read the block set yet, does not go below it.
	derived := map[digest.Digest]bool{}
	for _, b := range h.Blobs {
		if b.Derive != nil {
			derived[b.Derive.Blocked.Digest] = true
			derived[b.Derive.BlockSet.Digest] = true
		}
	}
	var missing []Blob
	required := map[digest.Digest]Blob{}
	inClosure := map[digest.Digest]bool{}
	hydrated := map[digest.Digest]bool{}
	for _, im := range h.Images {
		// A derived block set is not read even when the store has it (an
		// apply run again): the walk is the same as at create.
		hide := hideFetcher{f: meta, hidden: derived}
		c, err := walk(ctx, hide, im.Name, im.Index, true)
		if err != nil {
			return fmt.Errorf("bundle %s: %w", path, err)
		}
		if err := c.addReferrers(ctx, hide, im.Referrers, true); err != nil {
			return fmt.Errorf("bundle %s: %w", path, err)
		}
		c.Missing = slices.DeleteFunc(c.Missing, func(b Blob) bool { return derived[b.Digest] })
		for _, d := range c.Hydrated {
			hydrated[d.Digest] = true
		}
		if len(c.Missing) == 0 && (c.Standard.Digest != im.Standard.Digest || c.Standard.Size != im.Standard.Size) {
			return fmt.Errorf("bundle %s: image %s: the header says standard image %s, its index says %s", path, im.Name, im.Standard.Digest, c.Standard.Digest)
		}
		missing = append(missing, c.Missing...)
		if err := warmExists(ctx, s, c.Blobs, shipped, derived); err != nil {
			return err
		}
		for _, b := range c.Blobs {
			inClosure[b.Digest] = true
			if derived[b.Digest] {
				continue
			}
			if sb, ok := shipped[b.Digest]; ok {
				if sb.Size != b.Size {
					return fmt.Errorf("bundle %s: image %s: blob %s is %d bytes in the bundle, %d in its manifest", path, im.Name, b.Digest, sb.Size, b.Size)
				}
				continue
			}
			if _, ok := required[b.Digest]; ok || c.isMissing(b.Digest) {
				continue
			}
			required[b.Digest] = b
			size, ok, err := blobSize(ctx, s, b.Digest)
			if err != nil {
				return err
			}
			if !ok || size != b.Size {
				missing = append(missing, b)
			}
		}
	}
	// Patch bases are prerequisites too (usually blobs of the images the
	// target had before, which the new images no longer use).
	for _, b := range h.Blobs {
		if b.Patch == nil {
			continue
		}
		base := Blob{Digest: b.Patch.Base.Digest, Size: b.Patch.Base.Size, Kind: b.Kind, MediaType: b.MediaType}
		if _, ok := required[base.Digest]; ok {
			continue
		}
		required[base.Digest] = base
		size, ok, err := blobSize(ctx, s, base.Digest)
		if err != nil {
			return err
		}
		if !ok || size != base.Size {
			missing = append(missing, base)
		}
	}
	if len(missing) > 0 {
		// A patched manifest whose base is missing could not be read; it
		// is in the bundle, so it is not itself missing.
		var out []Blob
		for _, m := range missing {
			if _, ok := shipped[m.Digest]; !ok {
				out = append(out, m)
			}
		}
		return &MissingError{Missing: out}
	}
	for _, b := range h.Blobs {
		if b.Derive != nil {
			// A standard layer of an image, whose blocked form is one.
			if !hydrated[b.Digest] || !inClosure[b.Derive.Blocked.Digest] || !inClosure[b.Derive.BlockSet.Digest] {
				return fmt.Errorf("bundle %s: standard layer %s and its blocked form %s are not part of any image in the bundle", path, b.Digest, b.Derive.Blocked.Digest)
			}
			continue
		}
		if !inClosure[b.Digest] {
			return fmt.Errorf("bundle %s: blob %s is not part of any image in the bundle", path, b)
		}
	}
	var req []Blob
	for _, b := range required {
		req = append(req, b)
	}
	if t := totals(req); t.Blobs != h.Requires.Blobs || t.Bytes != h.Requires.Bytes {
		return fmt.Errorf("bundle %s: the images need %d blobs (%d bytes) from the store, the header says %d (%d bytes)", path, t.Blobs, t.Bytes, h.Requires.Blobs, h.Requires.Bytes)
	}
	res.Required = Count{Blobs: len(req), Bytes: totals(req).Bytes}
	return nil
}

// warmExists checks, on two goroutines, that the store holds the blobs of
// bs that the bundle neither ships nor derives: the first check of a blob in
// a process hashes it (store.Exists), a few hundred megabytes for an image,
// and the store remembers the result for the checks that follow.
func warmExists(ctx context.Context, s *store.Store, bs []Blob, shipped map[digest.Digest]Blob, derived map[digest.Digest]bool) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for _, b := range bs {
		if _, ok := shipped[b.Digest]; ok || derived[b.Digest] {
			continue
		}
		g.Go(func() error {
			_, err := s.Exists(ctx, b.Digest)
			return err
		})
	}
	return g.Wait()
}

func (c *Closure) isMissing(d digest.Digest) bool {
	for _, m := range c.Missing {
		if m.Digest == d {
			return true
		}
	}
	return false
}

// memFetcher serves the manifests read by the first pass (already
// verified), and anything else from the store.
type memFetcher struct {
	blobs map[digest.Digest][]byte
	next  Fetcher
}

func (m memFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if b, ok := m.blobs[desc.Digest]; ok {
		return io.NopCloser(store.VerifyReader(bytes.NewReader(b), desc)), nil
	}
	return m.next.Fetch(ctx, desc)
}

// ingest is apply's second pass: every blob the store lacks is written to a
// temp file in the store and checked against its digest and size (a patched
// blob the check pass rebuilt is in batch already: adopted as it is); then one
// filesystem sync makes them all durable and each is renamed into place
// (store.Batch). One sync for the whole bundle instead of one per blob: an
// fsync after each of a thousand blocks is most of the time of a naive
// ingest. No blob is ever visible under its name before it is complete.
func ingest(ctx context.Context, s *store.Store, path string, h *Header, res *ApplyResult, progress ProgressFunc, batch *store.Batch, rb *rebuilder) (err error) {
	defer func() {
		if err != nil {
			batch.Discard()
		}
	}()
	r, err := Open(path)
	if err != nil {
		return err
	}
	defer r.Close()
	budget := rb.budget
	var done int64
	shipped := h.Shipped()
	buf := make([]byte, 1<<20)
	for {
		// Raw entry bytes: the BlobWriter hashes them and batch.Add checks
		// digest and size, so reading through a VerifyReader would hash twice.
		b, rd, err := r.nextRaw()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		size, ok, err := blobSize(ctx, s, b.Digest)
		if err != nil {
			return err
		}
		switch {
		case b.Derive != nil:
			// A standard layer: its blocked form was derived by the
			// check pass; materializing rebuilds it from that.
		case rb.prepared(b.Digest):
			// Rebuilt and checked by the check pass, in the batch already.
			res.Ingested.Blobs++
			res.Ingested.Bytes += b.Size
		case ok && size == b.Size:
			res.Present.Blobs++
			res.Present.Bytes += b.Size
		default:
			if b.Patch != nil {
				// A patched manifest (read in memory by the check pass), or
				// a blob the store held then and has lost since.
				// The BlobWriter checks the rebuilt blob; a damaged patch
				// fails to decode or to match.
				out, closeDec, err := openPatched(ctx, s, b, rd, budget)
				if err != nil {
					return err
				}
				rd = &closeAtEOF{r: out, close: closeDec}
			}
			w, err := s.NewWriter(ctx)
			if err != nil {
				return err
			}
			if _, err := io.CopyBuffer(w, rd, buf); err != nil {
				w.Close()
				return fmt.Errorf("bundle %s: ingest %s: %w", path, b, err)
			}
			if err := batch.Add(ctx, w, b.Descriptor()); err != nil {
				// Only if the file changed since the first pass.
				return fmt.Errorf("bundle %s: ingest %s (did the bundle change while being applied?): %w", path, b, err)
			}
			res.Ingested.Blobs++
			res.Ingested.Bytes += b.Size
		}
		done += b.entry().Size
		if progress != nil {
			progress("ingest", done, shipped)
		}
	}
	res.Ingested.Blobs += rb.derived.Blobs
	res.Ingested.Bytes += rb.derived.Bytes
	return batch.Commit(ctx)
}
