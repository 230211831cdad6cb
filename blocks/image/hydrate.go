package image

import (
	"context"
	"errors"
	"fmt"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// HydrateOptions configure Hydrate.
type HydrateOptions struct {
	// Progress, if set, receives a progress bar of layer bytes written (or,
	// with PlainProgress, a line now and then).
	Progress      io.Writer
	PlainProgress bool
}

// Hydrate rebuilds the standard image of name from its blocked form and
// writes it to dst: every layer with blocks is reassembled from its blocked
// layer and the block members (bytes are copied, never recompressed, and
// checked against the standard layer's digest); layers without blocks,
// configs and manifests are copied. It returns the standard descriptor (the
// manifest digest users pin). On any failure dst is aborted, so the
// destination is left absent.
func Hydrate(ctx context.Context, s *store.Store, name string, dst transport.Sink, opts HydrateOptions) (_ ocispec.Descriptor, err error) {
	defer func() {
		if err != nil {
			if aerr := dst.Abort(); aerr != nil {
				err = errors.Join(err, fmt.Errorf("abort: %w", aerr))
			}
		}
	}()
	// The lease keeps gc away from what hydrate reads and, for
	// Materialize, from the layers it writes into the store.
	release, err := s.Lease(ctx)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("hydrate: %w", err)
	}
	defer release()
	img, err := Resolve(ctx, s, name)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("hydrate: %w", err)
	}
	h := &hydrator{s: s, dst: dst}
	if opts.Progress != nil {
		var total int64
		for _, m := range img.Manifests {
			for _, l := range m.Layers {
				total += l.Standard.Size
			}
		}
		h.prog = newProgress(opts.Progress, opts.PlainProgress, total, "hydrate")
		defer h.prog.finish()
	}
	// Layers first, several at a time when the sink allows it, then per
	// manifest its config and the manifest itself.
	if err := h.layers(ctx, img.Manifests); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("hydrate %s: %w", name, err)
	}
	for _, m := range img.Manifests {
		if err := h.manifest(ctx, m); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("hydrate %s: %w", name, err)
		}
	}
	for _, o := range img.Others {
		if err := h.copyTree(ctx, o); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("hydrate %s: %w", name, err)
		}
	}
	if img.StandardIndex != nil {
		if err := h.copyBlob(ctx, img.Standard); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("hydrate %s: standard index: %w", name, err)
		}
	}
	if err := dst.Commit(ctx, img.Standard); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("hydrate %s: %w", name, err)
	}
	return img.Standard, nil
}

// Materialize hydrates into the store itself every standard layer of name
// that the store lacks (after a bundle apply, the store holds only blocked
// layers and members), so that the standard image can be read from the
// store directly. Layers are rebuilt several at a time, and each byte is
// hashed once: members are read unhashed (store.OpenUnverified) because the
// layer written is checked against its digest, and the layer is written
// into the store without hashing it again (store.WriteVerified). It returns
// the standard descriptor.
func Materialize(ctx context.Context, s *store.Store, name string) (ocispec.Descriptor, error) {
	return Hydrate(ctx, s, name, storeSink{s}, HydrateOptions{})
}

// storeSink is the store as a Sink: blobs go in verified; there is nothing
// to commit (the image is already tagged) and nothing to undo (the blobs
// written are valid content). The store takes concurrent pushes.
type storeSink struct{ s *store.Store }

func (t storeSink) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	return t.s.Push(ctx, desc, r)
}

// WriteVerified stores what layer.Hydrate writes, which it checks against
// desc, without hashing it again (see verifiedWriter).
func (t storeSink) WriteVerified(ctx context.Context, desc ocispec.Descriptor, write func(io.Writer) error) error {
	return t.s.WriteVerified(ctx, desc, write)
}
func (t storeSink) ConcurrentPush() bool { return true }
func (t storeSink) Exists(ctx context.Context, desc ocispec.Descriptor) (bool, error) {
	return t.s.Exists(ctx, desc.Digest)
}
func (t storeSink) Commit(context.Context, ocispec.Descriptor) error { return nil }
func (t storeSink) Abort() error                                     { return nil }

type hydrator struct {
	s    *store.Store
	dst  transport.Sink
	prog *progress
}

// manifest writes the config and the manifest of m (its layers are
// written before, by layers).
func (h *hydrator) manifest(ctx context.Context, m *Manifest) error {
	if err := h.copyBlob(ctx, m.Manifest.Config); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return h.copyBlob(ctx, m.Descriptor)
}

// layer writes one standard layer to the sink. A layer with blocks is
// always reassembled from the blocked layer and its members (even when the
// store also holds the standard layer), so every hydrate checks the blocked
// form it ships.
func (h *hydrator) layer(ctx context.Context, l Layer) error {
	if ok, err := h.dst.Exists(ctx, l.Standard); err != nil {
		return err
	} else if ok {
		h.prog.add(l.Standard.Size)
		return nil
	}
	if !l.HasBlocks() {
		return h.copyCounted(ctx, l.Standard)
	}
	blocked, err := h.s.Fetch(ctx, l.Blocked)
	if err != nil {
		return fmt.Errorf("blocked layer: %w", err)
	}
	defer blocked.Close()
	if vw, ok := h.dst.(verifiedWriter); ok {
		// The store: layer.Hydrate writes straight into the temp file,
		// which is renamed only if the layer matched its digest.
		var herr error
		werr := vw.WriteVerified(ctx, plain(l.Standard), func(w io.Writer) error {
			herr = layer.Hydrate(ctx, blocked, h.prog.writer(w), l.Members, h.s, plain(l.Standard))
			return herr
		})
		if herr != nil {
			return herr
		}
		return werr
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := layer.Hydrate(ctx, blocked, pw, l.Members, h.s, plain(l.Standard))
		pw.CloseWithError(err)
		done <- err
	}()
	// layer.Hydrate checks every byte against the standard layer digest and
	// fails the pipe before EOF on a mismatch, so the sink need not hash again.
	perr := h.dst.Push(ctx, plain(l.Standard), transport.Verified(h.prog.reader(pr)))
	// Unblock the writer if Push stopped early. Hydrate's own error comes
	// first, as it says why (a tampered member, a stub naming an unlisted
	// block), unless it only saw the destination stop reading.
	pr.CloseWithError(errDestStopped)
	herr := <-done
	if herr != nil && !(perr != nil && errors.Is(herr, errDestStopped)) {
		return herr
	}
	return perr
}

var errDestStopped = errors.New("hydrate: the destination stopped reading")

func (h *hydrator) copyCounted(ctx context.Context, d ocispec.Descriptor) error {
	rc, err := h.s.Fetch(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	return h.dst.Push(ctx, plain(d), h.prog.reader(rc))
}

func (h *hydrator) copyBlob(ctx context.Context, d ocispec.Descriptor) error {
	d = plain(d)
	if ok, err := h.dst.Exists(ctx, d); err != nil || ok {
		return err
	}
	rc, err := h.s.Fetch(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	return h.dst.Push(ctx, d, rc)
}

// copyTree copies a manifest or index (an attestation) and what it names.
func (h *hydrator) copyTree(ctx context.Context, d ocispec.Descriptor) error {
	switch {
	case transport.IsIndex(d.MediaType):
		var idx ocispec.Index
		if err := h.s.GetJSON(ctx, plain(d), &idx); err != nil {
			return err
		}
		for _, c := range idx.Manifests {
			if err := h.copyTree(ctx, c); err != nil {
				return err
			}
		}
	case transport.IsManifest(d.MediaType):
		var m ocispec.Manifest
		if err := h.s.GetJSON(ctx, plain(d), &m); err != nil {
			return err
		}
		for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			if err := h.copyBlob(ctx, b); err != nil {
				return fmt.Errorf("copy %s of %s: %w", b.Digest, d.Digest, err)
			}
		}
	}
	return h.copyBlob(ctx, d)
}
