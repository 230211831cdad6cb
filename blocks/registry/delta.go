package registry

// Static deltas: an update bundle (docs/BUNDLES.md) from a base image to
// the pushed image, published beside the image as an OCI 1.1 referrer of
// its index, the way OSTree publishes from->to deltas next to commits
// (docs/REGISTRY.md "Deltas", docs/FORMAT.md section 8c). A pull into a
// store that holds the base downloads that bundle, which carries changed
// blocks as binary deltas and changed blocked layers as member patches,
// instead of the changed blocks and layers whole.
//
// The image index is never touched: its digest and signatures stay valid,
// old clients never see the delta, and deltas for new bases can be added
// later by pushing again.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

const (
	// maxDeltaManifest bounds one delta manifest read from a registry (they
	// are under 1 KiB).
	maxDeltaManifest = 64 << 10
	// maxDeltaCandidates bounds the delta manifests one pull reads: those
	// whose base the store holds, in listing order.
	maxDeltaCandidates = 8
	// deltaTempName prefixes the temp files (store.CreateTemp) that hold a
	// downloaded bundle while it is applied.
	deltaTempName = "delta"
)

// DeltaPush is one delta that push published, or found published, beside
// the image.
type DeltaPush struct {
	// Base is the store name given to --delta-from; BaseIndex its image
	// index, which a store must hold for the delta to apply.
	Base      string             `json:"base"`
	BaseIndex ocispec.Descriptor `json:"baseIndex"`
	// Manifest is the delta manifest (a referrer of the pushed index) and
	// Bundle its one layer, the bundle file.
	Manifest ocispec.Descriptor `json:"manifest"`
	Bundle   ocispec.Descriptor `json:"bundle"`
	// Present: the registry already listed a delta from this base for the
	// image; nothing was made or pushed.
	Present bool `json:"present,omitempty"`
}

// DeltaPull says which delta a pull applied.
type DeltaPull struct {
	Manifest  ocispec.Descriptor `json:"manifest"`
	Bundle    ocispec.Descriptor `json:"bundle"`
	BaseIndex digest.Digest      `json:"baseIndex"`
	// Ingested counts the blobs the bundle added to the store.
	Ingested Count `json:"ingested"`
	// Instead is what the blobs the bundle replaced would have cost as
	// blocks (the bytes of the blobs the store lacked).
	Instead int64 `json:"instead"`
}

// deltaManifest is a delta manifest, checked (parseDeltaManifest).
type deltaManifest struct {
	desc   ocispec.Descriptor // the manifest itself
	bundle ocispec.Descriptor // its layer
	base   digest.Digest      // the base image index
}

// parseDeltaManifest checks that data is a delta manifest for the image
// index subject (docs/FORMAT.md section 8c) and returns its bundle and
// base. data comes from a registry: everything is checked, nothing trusted.
func parseDeltaManifest(data []byte, subject digest.Digest) (*deltaManifest, error) {
	m, err := parseTransportManifest(data, subject, blocks.ArtifactTypeDelta, "delta manifest", maxDeltaManifest)
	if err != nil {
		return nil, err
	}
	switch {
	case len(m.Layers) != 1:
		return nil, fmt.Errorf("delta manifest: %d layers, want 1 (the bundle)", len(m.Layers))
	}
	l := m.Layers[0]
	if l.MediaType != blocks.MediaTypeBundle {
		return nil, fmt.Errorf("delta manifest: layer media type %q, want %s", l.MediaType, blocks.MediaTypeBundle)
	}
	if err := l.Digest.Validate(); err != nil || l.Digest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("delta manifest: bundle digest %q is not a sha256 digest", l.Digest)
	}
	if l.Size <= 0 {
		return nil, fmt.Errorf("delta manifest: bundle %s: size %d", l.Digest, l.Size)
	}
	base := digest.Digest(m.Annotations[blocks.AnnotationDeltaBase])
	if err := base.Validate(); err != nil || base.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("delta manifest: annotation %s = %q is not a sha256 digest", blocks.AnnotationDeltaBase, base)
	}
	if base == subject {
		return nil, fmt.Errorf("delta manifest: its base is the image itself")
	}
	return &deltaManifest{
		desc:   ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data))},
		bundle: ocispec.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size},
		base:   base,
	}, nil
}

// makeDeltaManifest is the delta manifest for bundleDesc, from the image
// index base (whose standard image is baseStd) to the image index subject.
// The same inputs give the same bytes, so pushing again is idempotent.
func makeDeltaManifest(subject, bundleDesc ocispec.Descriptor, base, baseStd digest.Digest) ([]byte, error) {
	return makeTransportManifest(blocks.ArtifactTypeDelta, subject,
		[]ocispec.Descriptor{{MediaType: blocks.MediaTypeBundle, Digest: bundleDesc.Digest, Size: bundleDesc.Size}},
		map[string]string{
			blocks.AnnotationDeltaBase:         base.String(),
			blocks.AnnotationDeltaBaseStandard: baseStd.String(),
		})
}

// makeTransportManifest is the manifest of one of blockfile's transport
// referrers (a delta, a block map) of the image index subject: an OCI 1.1
// artifact manifest with the empty config, in encoding/json's bytes of
// these fields in this order, so the same content gives the same digest.
func makeTransportManifest(artifactType string, subject ocispec.Descriptor, layers []ocispec.Descriptor, annotations map[string]string) ([]byte, error) {
	sub := ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	return json.Marshal(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: ocispec.DescriptorEmptyJSON.Size},
		Layers:       layers,
		Subject:      &sub,
		Annotations:  annotations,
	})
}

// parseTransportManifest checks what every transport manifest read from a
// registry shares (what, e.g. "delta manifest", names it in errors): at most
// limit bytes, schemaVersion 2, the OCI manifest media type, artifactType,
// and the image index subject as its subject.
func parseTransportManifest(data []byte, subject digest.Digest, artifactType, what string, limit int) (*ocispec.Manifest, error) {
	if len(data) > limit {
		return nil, fmt.Errorf("%s of %d bytes, over the limit of %d", what, len(data), limit)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case m.SchemaVersion != 2:
		return nil, fmt.Errorf("%s: schemaVersion %d, want 2", what, m.SchemaVersion)
	case m.MediaType != ocispec.MediaTypeImageManifest:
		return nil, fmt.Errorf("%s: mediaType %q, want %s", what, m.MediaType, ocispec.MediaTypeImageManifest)
	case m.ArtifactType != artifactType:
		return nil, fmt.Errorf("%s: artifactType %q, want %s", what, m.ArtifactType, artifactType)
	case m.Subject == nil || m.Subject.Digest != subject:
		return nil, fmt.Errorf("%s: its subject is not the image index %s", what, subject)
	}
	return &m, nil
}

// pushDeltas publishes, for each store image named in bases, the bundle
// from it to the image idx (bundle.Create with that base: deltas and
// patches), unless the registry already lists a delta from that base.
// Called after the index is pushed, so the subject exists.
func (p *pusher) pushDeltas(ctx context.Context, imageName string, idx ocispec.Descriptor, bases []string, listed []ocispec.Descriptor) ([]DeltaPush, error) {
	var out []DeltaPush
	done := map[digest.Digest]bool{}
	for _, base := range bases {
		bidx, err := p.s.Resolve(ctx, base)
		if err != nil {
			return out, fmt.Errorf("push %s: delta from %s: %w", imageName, base, err)
		}
		bidx = ocispec.Descriptor{MediaType: bidx.MediaType, Digest: bidx.Digest, Size: bidx.Size}
		if bidx.Digest == idx.Digest {
			return out, fmt.Errorf("push %s: delta from %s: it is the image itself (%s)", imageName, base, idx.Digest)
		}
		if done[bidx.Digest] {
			continue
		}
		done[bidx.Digest] = true
		if d := p.existingDelta(ctx, listed, idx.Digest, bidx.Digest); d != nil {
			out = append(out, DeltaPush{Base: base, BaseIndex: bidx, Manifest: d.desc, Bundle: d.bundle, Present: true})
			p.prog.note("delta from %s: already there (%s, %s)", base, d.desc.Digest, mib(d.bundle.Size))
			continue
		}
		dp, err := p.pushDelta(ctx, imageName, idx, base, bidx)
		if err != nil {
			return out, fmt.Errorf("push %s: delta from %s: %w", imageName, base, err)
		}
		out = append(out, *dp)
	}
	return out, nil
}

// existingDelta returns the listed delta from base to subject, read and
// checked, or nil.
func (p *pusher) existingDelta(ctx context.Context, listed []ocispec.Descriptor, subject, base digest.Digest) *deltaManifest {
	for _, d := range listed {
		if !transport.IsDelta(d) {
			continue
		}
		// Registries should copy the manifest's annotations into the
		// listing; some do not.
		if a, ok := d.Annotations[blocks.AnnotationDeltaBase]; (ok && a != base.String()) || d.Size > maxDeltaManifest {
			continue
		}
		data, err := p.r.manifest(ctx, d)
		if err != nil {
			continue // unreadable: push a good one
		}
		if m, err := parseDeltaManifest(data, subject); err == nil && m.base == base {
			return m
		}
	}
	return nil
}

// pushDelta makes the bundle from base to imageName in a temp directory and
// pushes it: the bundle blob and the empty config, then the delta manifest
// (child-tagged with TagChildren, like the index's manifests, so that
// distribution 2.x's garbage-collect --delete-untagged keeps it).
// go-containerregistry adds the manifest to the sha256-<hex> fallback index
// of the subject when the registry has no referrers API.
func (p *pusher) pushDelta(ctx context.Context, imageName string, idx ocispec.Descriptor, base string, bidx ocispec.Descriptor) (*DeltaPush, error) {
	bc, err := bundle.Walk(ctx, p.s, base, bidx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "blockfile-delta-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "delta.bundle")
	p.prog.note("delta from %s: making the bundle", base)
	if _, err := bundle.Create(ctx, p.s, []string{imageName}, path, bundle.CreateOptions{From: []string{base}}); err != nil {
		return nil, err
	}
	bdesc, err := fileDescriptor(path, blocks.MediaTypeBundle)
	if err != nil {
		return nil, err
	}
	if err := p.r.pusher.Upload(ctx, p.r.repo, &fileLayer{path: path, desc: bdesc}); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", bdesc.Digest, explain(err))
	}
	empty := static.NewLayer([]byte("{}"), types.MediaType(ocispec.MediaTypeEmptyJSON))
	if err := p.r.pusher.Upload(ctx, p.r.repo, empty); err != nil {
		return nil, fmt.Errorf("empty config: %w", explain(err))
	}
	data, err := makeDeltaManifest(idx, bdesc, bidx.Digest, bc.Standard.Digest)
	if err != nil {
		return nil, err
	}
	mdesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data))}
	var at name.Reference = p.r.repo.Digest(mdesc.Digest.String())
	if p.tagChildren {
		at = p.r.repo.Tag(ChildTag(mdesc.Digest))
	}
	if err := p.r.putManifest(ctx, at, mdesc.MediaType, data); err != nil {
		return nil, err
	}
	p.prog.note("delta from %s: pushed %s (bundle %s)", base, mdesc.Digest, mib(bdesc.Size))
	return &DeltaPush{Base: base, BaseIndex: bidx, Manifest: mdesc, Bundle: bdesc}, nil
}

// fileDescriptor hashes the file at path.
func fileDescriptor(path, mediaType string) (ocispec.Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: %w", path, err)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.NewDigest(digest.SHA256, h), Size: n}, nil
}

// fileLayer is a file of known digest as a go-containerregistry layer, for
// upload. Compressed re-opens it, so a retried upload starts over; the
// registry checks the digest of what it receives.
type fileLayer struct {
	path string
	desc ocispec.Descriptor
}

func (l *fileLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }
func (l *fileLayer) DiffID() (v1.Hash, error) { return l.Digest() }
func (l *fileLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }

// errDeltaUnusable marks a delta that cannot serve this pull (its base is
// not complete in the store after all, the registry lacks its blob): the
// pull fetches blocks instead. Any other failure of a chosen delta fails
// the pull.
var errDeltaUnusable = errors.New("delta not usable")

// useDelta is the delta step of a blocked pull. need are the blobs of the
// image the store lacks (total bytes). If the registry lists a delta to the
// image from an image index the store holds completely, and its bundle is
// smaller than total, useDelta downloads the bundle (verified against its
// digest and size) and applies it (bundle.Apply, which checks every
// prerequisite and digest before writing anything, IngestOnly: the pull
// tags and delivers). It returns the blobs still missing (none, normally),
// which the pull then fetches as it does without a delta.
//
// A delta that fails to verify fails the pull (as a tampered blob does),
// naming its digest, with the store unchanged; a listing the registry
// refuses, or a delta that turns out not to fit, leaves the pull to the
// blocks.
func useDelta(ctx context.Context, s *store.Store, meta *metaFetcher, root ocispec.Descriptor, c *bundle.Closure, need []bundle.Blob, total int64, listing func() ([]ocispec.Descriptor, error), res *PullResult, opts PullOptions) ([]bundle.Blob, int64, error) {
	if opts.NoDeltas || len(need) == 0 {
		return need, total, nil
	}
	ref := meta.r.ref
	note := func(format string, args ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "pull %s: "+format+"\n", append([]any{ref}, args...)...)
		}
	}
	// A bundle is worth it only if smaller than the blocks, and never
	// larger than the standard image: a hostile listing cannot make the
	// pull download more than it would anyway.
	limit := min(total, res.StandardSize)
	d, err := findDelta(ctx, s, meta, root, limit, listing, func(err error) { note("%v: skipped", err) })
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		note("no delta (%v): fetching blocks", err)
		return need, total, nil
	}
	if d == nil {
		return need, total, nil
	}
	note("delta %s from %s: %s instead of %s of blobs", d.desc.Digest, d.base, mib(d.bundle.Size), mib(total))
	ing, err := applyDelta(ctx, s, meta, root, c.Standard, d, opts)
	if err != nil {
		if errors.Is(err, errDeltaUnusable) && ctx.Err() == nil {
			note("%v: fetching blocks", err)
			return need, total, nil
		}
		return nil, 0, fmt.Errorf("delta %s (bundle %s): %w (--no-deltas pulls the blocks instead)", d.desc.Digest, d.bundle.Digest, err)
	}
	res.Delta = &DeltaPull{Manifest: d.desc, Bundle: d.bundle, BaseIndex: d.base, Ingested: ing, Instead: total}
	res.Downloaded.add(d.bundle.Size)
	// What the bundle did not bring still comes as blobs.
	var rest []bundle.Blob
	var n int64
	for _, b := range need {
		if _, ok, err := blobSize(ctx, s, b.Descriptor()); err != nil {
			return nil, 0, err
		} else if !ok {
			rest = append(rest, b)
			n += b.Size
		}
	}
	return rest, n, nil
}

// findDelta lists the delta manifests of root and returns the one with the
// smallest bundle (under limit bytes) whose base image the store holds
// completely, or nil. A candidate that does not read or check is reported
// to skipped and passed over.
func findDelta(ctx context.Context, s *store.Store, meta *metaFetcher, root ocispec.Descriptor, limit int64, listing func() ([]ocispec.Descriptor, error), skipped func(error)) (*deltaManifest, error) {
	listed, err := listing()
	if err != nil {
		return nil, err
	}
	var best *deltaManifest
	held := map[digest.Digest]bool{}
	holds := func(base digest.Digest) bool {
		ok, seen := held[base]
		if !seen {
			ok = holdsImage(ctx, s, base)
			held[base] = ok
		}
		return ok
	}
	tried := 0
	for _, l := range listed {
		if !transport.IsDelta(l) || l.Size > maxDeltaManifest {
			continue
		}
		// The listing's annotation (registries should copy the manifest's;
		// some do not) skips deltas from bases the store lacks without
		// reading them; the manifest, read by digest and checked, decides.
		if a, ok := l.Annotations[blocks.AnnotationDeltaBase]; ok {
			if base := digest.Digest(a); base.Validate() != nil || !holds(base) {
				continue
			}
		}
		if tried++; tried > maxDeltaCandidates {
			break
		}
		// One delta that does not read or check (deleted, damaged) does not
		// hide the others.
		data, err := meta.r.manifest(ctx, l)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			skipped(fmt.Errorf("delta %s: %w", l.Digest, err))
			continue
		}
		d, err := parseDeltaManifest(data, root.Digest)
		if err != nil {
			skipped(fmt.Errorf("%s: %w", l.Digest, err))
			continue
		}
		if d.bundle.Size >= limit || !holds(d.base) {
			continue
		}
		if best == nil || d.bundle.Size < best.bundle.Size {
			best = d
		}
	}
	return best, nil
}

// holdsImage reports whether s holds the image index d and every blob its
// blocked form needs (so a bundle made against it applies).
func holdsImage(ctx context.Context, s *store.Store, d digest.Digest) bool {
	size, err := statBlob(s, d)
	if err != nil || size <= 0 || size > maxManifest {
		return false
	}
	c, err := bundle.Walk(ctx, s, d.String(), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: d, Size: size})
	if err != nil {
		return false
	}
	for _, b := range c.Blobs {
		if _, ok, err := blobSize(ctx, s, b.Descriptor()); err != nil || !ok {
			return false
		}
	}
	return true
}

// applyDelta downloads d's bundle into a temp file of the store (streamed;
// the reader checks its digest and size and never reads past the size)
// and applies it, ingest only. The bundle must deliver exactly the image
// root, hydrating to std.
func applyDelta(ctx context.Context, s *store.Store, meta *metaFetcher, root, std ocispec.Descriptor, d *deltaManifest, opts PullOptions) (Count, error) {
	f, err := s.CreateTemp(deltaTempName)
	if err != nil {
		return Count{}, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	rc, err := meta.r.openBlob(ctx, d.bundle)
	if err != nil {
		if isNotFound(err) {
			return Count{}, fmt.Errorf("bundle %s: %w: %w", d.bundle.Digest, errDeltaUnusable, err)
		}
		return Count{}, err
	}
	prog := newProgress(opts.Progress, opts.PlainProgress, d.bundle.Size, "pull "+meta.r.ref.String()+" delta")
	_, err = io.Copy(f, progReader{rc, prog})
	rc.Close()
	prog.finish()
	if err != nil {
		return Count{}, err
	}
	h, err := bundle.ReadHeader(f.Name())
	if err != nil {
		return Count{}, err
	}
	if len(h.Images) != 1 || h.Images[0].Index.Digest != root.Digest || h.Images[0].Standard.Digest != std.Digest {
		return Count{}, fmt.Errorf("the bundle does not deliver image %s (standard %s) alone", root.Digest, std.Digest)
	}
	ar, err := bundle.Apply(ctx, s, f.Name(), bundle.ApplyOptions{IngestOnly: true})
	if err != nil {
		var me *bundle.MissingError
		if errors.As(err, &me) {
			return Count{}, fmt.Errorf("%w: %w", errDeltaUnusable, err)
		}
		return Count{}, err
	}
	return Count{Blobs: ar.Ingested.Blobs, Bytes: ar.Ingested.Bytes}, nil
}

// storeFirst reads manifests for a pull's walk from the store when it holds
// them (verified, as every store read), else from the registry: an upgrade
// then downloads only the manifests that changed.
type storeFirst struct {
	s    *store.Store
	next bundle.Fetcher
}

func (f storeFirst) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if _, ok, err := blobSize(ctx, f.s, desc); err == nil && ok {
		return f.s.Fetch(ctx, desc)
	}
	return f.next.Fetch(ctx, desc)
}
