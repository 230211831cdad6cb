package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// CosignTagSuffixes are the tag suffixes cosign uses for what it attaches
// to an image at registries without the referrers API:
// sha256-<hex>.sig (signatures), .att (attestations), .sbom (SBOMs).
var CosignTagSuffixes = []string{"sig", "att", "sbom"}

// maxSourceReferrers caps the referrers read for one subject, so a hostile
// registry cannot make export copy without bound.
const maxSourceReferrers = 256

// maxListed caps the entries of one referrers listing (signatures and
// delta manifests together) that are looked at.
const maxListed = 4 * maxSourceReferrers

// ReferrerSource is a Source that can list what refers to one of its
// manifests (docker:// sources can).
type ReferrerSource interface {
	// Referrers returns the manifests that refer to subject: OCI 1.1
	// referrers (whose subject field names it) and cosign's tag-scheme
	// ones, the latter annotated with blocks.AnnotationReferrerTag. Their
	// content is read with Fetch, verified, like any other manifest.
	Referrers(ctx context.Context, subject ocispec.Descriptor) ([]ocispec.Descriptor, error)
}

// Referrers lists the referrers of subject in the source repository: the
// registry's referrers API, else the sha256-<hex> fallback index (both
// through go-containerregistry's remote.Referrers), then cosign's
// sha256-<hex>.{sig,att,sbom} tags.
func (s *remoteSource) Referrers(ctx context.Context, subject ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	var out []ocispec.Descriptor
	err := s.try(func(e Endpoint) error {
		var err error
		out, err = ListReferrers(ctx, e.Ref.Context(), append(e.Options, remote.WithContext(ctx)), subject.Digest)
		return err
	})
	return out, err
}

// ListReferrers is Registry.Referrers for callers that hold a repository and
// its connection options (blocks/registry's pull). Delta manifests and
// block maps (IsTransport) are left out: they carry update bundles and
// raw block names for blockfile pull (ListTransport finds them), not
// signatures or attestations, and copying them would bring megabytes of
// bundle into the store.
func ListReferrers(ctx context.Context, repo name.Repository, opts []remote.Option, subject digest.Digest) ([]ocispec.Descriptor, error) {
	return ListReferrersKnown(ctx, repo, opts, subject, nil)
}

// CosignTags lists the repository's tags once and returns those cosign
// names (sha256-<hex>.<suffix>), so that ListReferrersKnown asks for no tag
// the repository lacks (a pull lists the referrers of every manifest of an
// image: three HEADs each otherwise). nil, when the listing fails or takes
// more than one page: then every tag is asked for.
func CosignTags(ctx context.Context, repo name.Repository, opts []remote.Option) map[string]bool {
	p, err := remote.NewPuller(append(append([]remote.Option{}, opts...), remote.WithContext(ctx))...)
	if err != nil {
		return nil
	}
	l, err := p.Lister(ctx, repo)
	if err != nil {
		return nil
	}
	page, err := l.Next(ctx)
	if err != nil || page == nil || l.HasNext() {
		return nil
	}
	out := map[string]bool{}
	for _, t := range page.Tags {
		for _, suffix := range CosignTagSuffixes {
			if strings.HasSuffix(t, "."+suffix) && strings.HasPrefix(t, "sha256-") {
				out[t] = true
			}
		}
	}
	return out
}

// ListReferrersKnown is ListReferrers; with tags (CosignTags) it asks only
// for the cosign tags listed there.
func ListReferrersKnown(ctx context.Context, repo name.Repository, opts []remote.Option, subject digest.Digest, tags map[string]bool) ([]ocispec.Descriptor, error) {
	where := "docker://" + repo.String()
	opts = append(append([]remote.Option{}, opts...), remote.WithContext(ctx))
	all, err := listSubjectReferrers(repo, opts, subject)
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, desc := range all {
		if !IsTransport(desc) {
			out = append(out, desc)
		}
	}
	for _, suffix := range CosignTagSuffixes {
		tag := repo.Tag(subject.Algorithm().String() + "-" + subject.Encoded() + "." + suffix)
		if tags != nil && !tags[tag.TagStr()] {
			continue
		}
		d, err := remote.Head(tag, opts...)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: tag %s: %w", where, tag.TagStr(), err)
		}
		desc := ociDescriptor(*d)
		if !IsManifest(desc.MediaType) && !IsIndex(desc.MediaType) {
			return nil, fmt.Errorf("%s: tag %s: media type %q is not a manifest", where, tag.TagStr(), desc.MediaType)
		}
		if err := desc.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%s: tag %s: digest %q: %w", where, tag.TagStr(), desc.Digest, err)
		}
		desc.Annotations = map[string]string{blocks.AnnotationReferrerTag: suffix}
		out = append(out, desc)
	}
	if len(out) > maxSourceReferrers {
		return nil, fmt.Errorf("%s: %d referrers of %s, more than the %d accepted", where, len(out), subject, maxSourceReferrers)
	}
	return out, nil
}

// IsDelta reports whether a referrers listing entry is a delta manifest
// (docs/FORMAT.md section 8c): artifactType blocks.ArtifactTypeDelta, or,
// for registries that list the config's media type as the artifactType (as
// the OCI 1.1 drafts did), the delta's base annotation, which the
// referrers API and the fallback index copy from the manifest.
func IsDelta(desc ocispec.Descriptor) bool {
	if desc.ArtifactType == blocks.ArtifactTypeDelta {
		return true
	}
	_, ok := desc.Annotations[blocks.AnnotationDeltaBase]
	return ok
}

// IsBlockMap reports whether a referrers listing entry is a block map
// manifest (docs/FORMAT.md section 8d): artifactType
// blocks.ArtifactTypeBlockMap, or its annotation blocks.AnnotationBlockMap
// (for registries that list the config's media type as the artifactType).
func IsBlockMap(desc ocispec.Descriptor) bool {
	if desc.ArtifactType == blocks.ArtifactTypeBlockMap {
		return true
	}
	_, ok := desc.Annotations[blocks.AnnotationBlockMap]
	return ok
}

// IsTransport reports whether a referrers listing entry is one of
// blockfile's transport manifests (a delta or a block map): something a
// pull uses, not a statement about the image that a store keeps.
func IsTransport(desc ocispec.Descriptor) bool { return IsDelta(desc) || IsBlockMap(desc) }

// ListTransport lists the transport manifests of subject (IsTransport:
// deltas and block maps) in the registry's referrers API, else the
// sha256-<hex> fallback index. The listing is the registry's word: a
// caller reads each manifest by digest and checks it.
func ListTransport(ctx context.Context, repo name.Repository, opts []remote.Option, subject digest.Digest) ([]ocispec.Descriptor, error) {
	opts = append(append([]remote.Option{}, opts...), remote.WithContext(ctx))
	all, err := listSubjectReferrers(repo, opts, subject)
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, desc := range all {
		if IsTransport(desc) && IsManifest(desc.MediaType) {
			out = append(out, desc)
		}
	}
	return out, nil
}

// listSubjectReferrers reads the referrers API or the fallback index of
// subject: manifests and indexes with valid digests, each once, at most
// maxListed.
func listSubjectReferrers(repo name.Repository, opts []remote.Option, subject digest.Digest) ([]ocispec.Descriptor, error) {
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("referrers: subject %q: %w", subject, err)
	}
	where := "docker://" + repo.String()
	idx, err := remote.Referrers(repo.Digest(subject.String()), opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: referrers of %s: %w", where, subject, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%s: referrers of %s: %w", where, subject, err)
	}
	var out []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	for _, d := range im.Manifests {
		desc := ociDescriptor(d)
		if !IsManifest(desc.MediaType) && !IsIndex(desc.MediaType) {
			continue // not something the store keeps as a referrer
		}
		if err := desc.Digest.Validate(); err != nil || seen[desc.Digest] || desc.Digest == subject {
			continue
		}
		seen[desc.Digest] = true
		out = append(out, desc)
	}
	if len(out) > maxListed {
		return nil, fmt.Errorf("%s: %d referrers of %s, more than the %d accepted", where, len(out), subject, maxListed)
	}
	return out, nil
}

func ociDescriptor(d v1.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType:    string(d.MediaType),
		Digest:       digest.Digest(d.Digest.String()),
		Size:         d.Size,
		ArtifactType: d.ArtifactType,
		Annotations:  d.Annotations,
	}
}

// Fetcher reads blobs by descriptor, verifying them (*store.Store does).
type Fetcher interface {
	Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// ErrTagConflict: a referrer tag at the destination already names other
// content. It is not replaced (that would drop whatever it holds).
var ErrTagConflict = errors.New("tag exists with other content")

// PushReferrers pushes refs, read from f, to the repository of ref
// (host/repo[:tag|@digest]; only the repository is used), each with
// everything it names, so that clients find them the way they look:
//
//   - an OCI 1.1 referrer (a manifest with a subject field) is pushed by
//     digest; a registry with the referrers API lists it, and for one
//     without, go-containerregistry adds it to the sha256-<hex> fallback
//     index, as oras and cosign v3 do;
//   - a cosign tag-scheme referrer (blocks.AnnotationReferrerTag) is also
//     tagged sha256-<subject hex>.<suffix>, where cosign v2 looks.
//
// A tag that already names the same manifest is left as it is; one that
// names another is left too, and the push fails with ErrTagConflict after
// pushing everything else.
func (r Registry) PushReferrers(ctx context.Context, ref string, f Fetcher, refs []store.Referrer) error {
	nr, opts, err := r.Remote(ctx, ref)
	if err != nil {
		return err
	}
	return pushReferrers(ctx, r, nr, opts, f, refs)
}

// PushReferrersTo is Registry.PushReferrers for callers that hold a parsed
// reference and its connection options (blocks/registry's push).
func PushReferrersTo(ctx context.Context, nr name.Reference, opts []remote.Option, f Fetcher, refs []store.Referrer) error {
	return pushReferrers(ctx, Registry{}, nr, opts, f, refs)
}

func pushReferrers(ctx context.Context, reg Registry, nr name.Reference, opts []remote.Option, f Fetcher, refs []store.Referrer) error {
	opts = append([]remote.Option{}, opts...)
	repo := nr.Context()
	sink := &remoteSink{reg: reg, ref: nr, opts: opts, manifests: map[digest.Digest]rawManifest{}}
	p := &referrerPusher{f: f, sink: sink, done: map[digest.Digest]bool{}}
	var conflicts []error
	for _, rf := range refs {
		if err := store.CheckReferrer(rf.Descriptor); err != nil {
			return err
		}
		if err := p.push(ctx, plainDesc(rf.Descriptor), 0); err != nil {
			return fmt.Errorf("docker://%s: referrer %s of %s: %w", repo, rf.Descriptor.Digest, rf.Subject, err)
		}
		if rf.Descriptor.Annotations[blocks.AnnotationReferrerTag] == "" {
			continue
		}
		tag := repo.Tag(store.ReferrerTag(rf.Subject, rf.Descriptor))
		cur, err := remote.Head(tag, append(opts, remote.WithContext(ctx))...)
		switch {
		case err == nil && cur.Digest.String() == rf.Descriptor.Digest.String():
			continue
		case err == nil:
			conflicts = append(conflicts, fmt.Errorf("docker://%s: %s names %s, not %s: %w", repo, tag.TagStr(), cur.Digest, rf.Descriptor.Digest, ErrTagConflict))
			continue
		case !isNotFound(err):
			return fmt.Errorf("docker://%s: tag %s: %w", repo, tag.TagStr(), err)
		}
		m, ok := p.raw[rf.Descriptor.Digest]
		if !ok {
			return fmt.Errorf("docker://%s: referrer %s was not read", repo, rf.Descriptor.Digest)
		}
		if err := remote.Put(tag, m, append(opts, remote.WithContext(ctx))...); err != nil {
			return fmt.Errorf("docker://%s: tag %s: %w", repo, tag.TagStr(), err)
		}
	}
	return errors.Join(conflicts...)
}

func plainDesc(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// referrerPusher pushes a manifest or index after everything it names.
type referrerPusher struct {
	f    Fetcher
	sink *remoteSink
	done map[digest.Digest]bool
	raw  map[digest.Digest]rawManifest
}

// maxReferrerDepth bounds the nesting of indexes inside a referrer.
const maxReferrerDepth = 4

func (p *referrerPusher) push(ctx context.Context, desc ocispec.Descriptor, depth int) error {
	if p.done[desc.Digest] {
		return nil
	}
	if !IsManifest(desc.MediaType) && !IsIndex(desc.MediaType) {
		return p.pushBlob(ctx, desc)
	}
	if depth > maxReferrerDepth {
		return fmt.Errorf("%s: indexes nested more than %d deep", desc.Digest, maxReferrerDepth)
	}
	if desc.Size > maxJSON {
		return fmt.Errorf("manifest %s: %d bytes is too large", desc.Digest, desc.Size)
	}
	rc, err := p.f.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	rc.Close()
	if err != nil {
		return fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return fmt.Errorf("manifest %s: content does not match its descriptor: %w", desc.Digest, store.ErrDigestMismatch)
	}
	var n struct {
		Config    *ocispec.Descriptor  `json:"config,omitempty"`
		Layers    []ocispec.Descriptor `json:"layers,omitempty"`
		Manifests []ocispec.Descriptor `json:"manifests,omitempty"`
	}
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	var kids []ocispec.Descriptor
	if n.Config != nil {
		kids = append(kids, *n.Config)
	}
	kids = append(append(kids, n.Layers...), n.Manifests...)
	for _, k := range kids {
		if err := k.Digest.Validate(); err != nil {
			return fmt.Errorf("manifest %s: child digest %q: %w", desc.Digest, k.Digest, err)
		}
		if k.Data != nil && digest.FromBytes(k.Data) == k.Digest && int64(len(k.Data)) == k.Size {
			// Embedded (the OCI empty config): registries still want the blob.
			if err := p.pushData(ctx, plainDesc(k), k.Data); err != nil {
				return err
			}
			continue
		}
		if err := p.push(ctx, plainDesc(k), depth+1); err != nil {
			return err
		}
	}
	if err := p.sink.Push(ctx, desc, bytes.NewReader(data)); err != nil {
		return err
	}
	if p.raw == nil {
		p.raw = map[digest.Digest]rawManifest{}
	}
	p.raw[desc.Digest] = rawManifest{data: data, mediaType: desc.MediaType}
	p.done[desc.Digest] = true
	return nil
}

func (p *referrerPusher) pushBlob(ctx context.Context, desc ocispec.Descriptor) error {
	ok, err := p.sink.Exists(ctx, desc)
	if err != nil {
		return err
	}
	if !ok {
		rc, err := p.f.Fetch(ctx, desc)
		if err != nil {
			return err
		}
		err = p.sink.Push(ctx, desc, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	p.done[desc.Digest] = true
	return nil
}

func (p *referrerPusher) pushData(ctx context.Context, desc ocispec.Descriptor, data []byte) error {
	if p.done[desc.Digest] {
		return nil
	}
	ok, err := p.sink.Exists(ctx, desc)
	if err != nil {
		return err
	}
	if !ok {
		if err := p.sink.Push(ctx, desc, bytes.NewReader(data)); err != nil {
			return err
		}
	}
	p.done[desc.Digest] = true
	return nil
}

// Referrers lists the referrers of subject in the repository of ref (as
// docker:// sources do: the referrers API or the sha256-<hex> fallback
// index, then cosign's tags), for pull and the site mirror to copy into the
// store with store.AddReferrer.
func (r Registry) Referrers(ctx context.Context, ref string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	nr, opts, err := r.Remote(ctx, ref)
	if err != nil {
		return nil, err
	}
	return ListReferrers(ctx, nr.Context(), opts, subject)
}
