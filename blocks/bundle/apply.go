package bundle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
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

	// HydrateProgress and PlainProgress are passed to image.Hydrate for
	// each output.
	HydrateProgress io.Writer
	PlainProgress   bool
}

// ApplyResult says what apply did.
type ApplyResult struct {
	Images   []AppliedImage `json:"images"`
	Ingested Count          `json:"ingested"` // blobs written to the store by this run
	Present  Count          `json:"present"`  // shipped blobs the store already had
	Required Count          `json:"required"` // prerequisites found in the store
	Duration time.Duration  `json:"duration"`
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
	for _, m := range e.Missing {
		fmt.Fprintf(&b, "\n  %s", m)
	}
	return b.String()
}

// Apply checks the bundle at path against s and, only if every check
// passes, ingests its blobs, tags its images and hydrates them:
//
//  1. every prerequisite is in s with its size (else *MissingError);
//  2. the whole bundle is read once: every blob hashed, each image's
//     closure walked and found complete (shipped or in s), and every
//     shipped blob found in some closure;
//  3. the blobs are ingested (each verified again, temp file + rename);
//  4. each image is tagged, hydrated into s and written to the outputs.
//
// A failure in 1 or 2 leaves s unchanged. Apply is idempotent, and may be
// re-run after being killed at any point: blobs already ingested are kept.
func Apply(ctx context.Context, s *store.Store, path string, opts ApplyOptions) (*ApplyResult, error) {
	start := time.Now()
	h, err := ReadHeader(path)
	if err != nil {
		return nil, err
	}
	if len(h.Images) > 1 {
		for _, o := range opts.Outputs {
			if !strings.Contains(o, "{name}") {
				return nil, fmt.Errorf("output %q: the bundle holds %d images; put {name} in the output to write each", o, len(h.Images))
			}
		}
	}
	res := &ApplyResult{}
	res.Required, err = checkRequires(ctx, s, h.Requires)
	if err != nil {
		return nil, err
	}
	if err := verifyBundle(ctx, s, path, h, opts.Progress); err != nil {
		return nil, err
	}
	if err := ingest(ctx, s, path, h, res, opts.Progress); err != nil {
		return nil, err
	}
	for _, im := range h.Images {
		if err := s.Tag(ctx, im.Name, im.Index); err != nil {
			return nil, fmt.Errorf("tag %s: %w", im.Name, err)
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

// checkRequires makes sure s holds every prerequisite, with its size.
func checkRequires(ctx context.Context, s *store.Store, req []Blob) (Count, error) {
	var c Count
	var missing []Blob
	for _, b := range req {
		if err := ctx.Err(); err != nil {
			return c, err
		}
		size, ok, err := blobSize(ctx, s, b.Digest)
		if err != nil {
			return c, err
		}
		if !ok || size != b.Size {
			missing = append(missing, b)
			continue
		}
		c.Blobs++
		c.Bytes += b.Size
	}
	if len(missing) > 0 {
		return c, &MissingError{Missing: missing}
	}
	return c, nil
}

// blobSize returns the size of the blob d in s, if present.
func blobSize(ctx context.Context, s *store.Store, d digest.Digest) (int64, bool, error) {
	ok, err := s.Exists(ctx, d)
	if err != nil || !ok {
		return 0, false, err
	}
	fi, err := os.Stat(s.BlobPath(d))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("blob %s: %w", d, err)
	}
	return fi.Size(), true, nil
}

// verifyBundle is apply's first pass: it reads the whole bundle without
// writing anything, hashing every blob and keeping the indexes and
// manifests, then walks each image to check that its closure is exactly
// what the bundle ships plus what s holds.
func verifyBundle(ctx context.Context, s *store.Store, path string, h *Header, progress ProgressFunc) error {
	r, err := Open(path)
	if err != nil {
		return err
	}
	defer r.Close()
	meta := memFetcher{blobs: map[digest.Digest][]byte{}, next: s}
	var held, done int64
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, rd, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if b.Kind.isManifest() && b.Size <= maxJSONSize && held+b.Size <= maxMetaTotal {
			data, err := io.ReadAll(rd)
			if err != nil {
				return err
			}
			meta.blobs[b.Digest] = data
			held += b.Size
		} else if _, err := io.CopyBuffer(io.Discard, rd, buf); err != nil {
			return err
		}
		done += b.Size
		if progress != nil {
			progress("verify", done, h.Adds.Bytes)
		}
	}

	shipped := map[digest.Digest]Blob{}
	for _, b := range h.Blobs {
		shipped[b.Digest] = b
	}
	inClosure := map[digest.Digest]bool{}
	for _, im := range h.Images {
		c, err := Walk(ctx, meta, im.Name, im.Index)
		if err != nil {
			return fmt.Errorf("bundle %s: %w", path, err)
		}
		if c.Standard.Digest != im.Standard.Digest || c.Standard.Size != im.Standard.Size {
			return fmt.Errorf("bundle %s: image %s: header says standard image %s, its index says %s", path, im.Name, im.Standard.Digest, c.Standard.Digest)
		}
		for _, b := range c.Blobs {
			inClosure[b.Digest] = true
			if sb, ok := shipped[b.Digest]; ok {
				if sb.Size != b.Size {
					return fmt.Errorf("bundle %s: image %s: blob %s is %d bytes in the bundle, %d in its manifest", path, im.Name, b.Digest, sb.Size, b.Size)
				}
				continue
			}
			size, ok, err := blobSize(ctx, s, b.Digest)
			if err != nil {
				return err
			}
			if !ok || size != b.Size {
				return fmt.Errorf("bundle %s: image %s is incomplete: it needs %s, which is neither in the bundle nor in the store", path, im.Name, b)
			}
		}
	}
	for _, b := range h.Blobs {
		if !inClosure[b.Digest] {
			return fmt.Errorf("bundle %s: blob %s is not part of any image in the bundle", path, b)
		}
	}
	return nil
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

// ingest is apply's second pass: each blob the store lacks is pushed
// (verified, temp file + rename).
func ingest(ctx context.Context, s *store.Store, path string, h *Header, res *ApplyResult, progress ProgressFunc) error {
	r, err := Open(path)
	if err != nil {
		return err
	}
	defer r.Close()
	var done int64
	for {
		b, rd, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		size, ok, err := blobSize(ctx, s, b.Digest)
		if err != nil {
			return err
		}
		if ok && size == b.Size {
			res.Present.Blobs++
			res.Present.Bytes += b.Size
		} else {
			if err := s.Push(ctx, b.Descriptor(), rd); err != nil {
				return fmt.Errorf("bundle %s: ingest %s: %w", path, b, err)
			}
			res.Ingested.Blobs++
			res.Ingested.Bytes += b.Size
		}
		done += b.Size
		if progress != nil {
			progress("ingest", done, h.Adds.Bytes)
		}
	}
}
