package serve

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	gtransport "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// RegistryUpstream is the Upstream of `blockfile serve --upstream`: it reads
// registries through the connection settings every blockfile verb uses
// (transport.Registry: credentials, TLS, plain HTTP, hosts.toml mirrors).
//
// An image whose index has a blocked form is filled by the blockfile pull
// path (registry.Pull without materializing): the manifests, then only the
// configs, blocked layers and block members the store lacks; serve
// hydrates the standard layers on demand. Any other image (no blocked form)
// is copied as it is, blob for blob, so it keeps its digests; re-framing it
// as `blockfile pull` does would serve another digest than the registry's.
// Either way every blob is verified before it is moved into the store, and
// the store name is tagged last.
type RegistryUpstream struct {
	s    *store.Store
	reg  transport.Registry
	jobs int
	ua   string // User-Agent of every request, unique to this instance (Marks)
}

var _ Marker = (*RegistryUpstream)(nil)

// NewRegistryUpstream returns an Upstream filling s through reg, jobs blobs
// at a time (<= 0: registry.DefaultJobs).
func NewRegistryUpstream(s *store.Store, reg transport.Registry, jobs int) *RegistryUpstream {
	if jobs <= 0 {
		jobs = registry.DefaultJobs
	}
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return &RegistryUpstream{s: s, reg: reg, jobs: jobs, ua: "blockfile-serve-fill/" + hex.EncodeToString(b[:])}
}

// Marks reports whether r was sent by this Upstream (its User-Agent).
func (u *RegistryUpstream) Marks(r *http.Request) bool {
	return strings.Contains(r.Header.Get("User-Agent"), u.ua)
}

// endpoints are where registry/repository:reference is read from: the
// hosts.toml mirrors that may pull, then the registry.
func (u *RegistryUpstream) endpoints(ctx context.Context, reg, repository, reference string) ([]transport.Endpoint, error) {
	return u.reg.PullEndpoints(ctx, reg+"/"+repository+refSep(reference)+reference)
}

func (u *RegistryUpstream) options(ctx context.Context, e transport.Endpoint) []remote.Option {
	return append(slices.Clip(e.Options), remote.WithContext(ctx), remote.WithUserAgent(u.ua))
}

// Resolve asks the registry (HEAD) what the tag names now.
func (u *RegistryUpstream) Resolve(ctx context.Context, reg, repository, tag string) (ocispec.Descriptor, error) {
	eps, err := u.endpoints(ctx, reg, repository, tag)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var errs []error
	for _, e := range eps {
		if !e.Resolve {
			continue
		}
		d, err := remote.Head(e.Ref, u.options(ctx, e)...)
		err = notFound(err)
		if err == nil {
			desc := ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size}
			if err := desc.Digest.Validate(); err != nil {
				return ocispec.Descriptor{}, fmt.Errorf("%s: registry answered digest %q: %w", e.Ref, desc.Digest, err)
			}
			return desc, nil
		}
		errs = append(errs, u.explain(e, err))
		if ctx.Err() != nil {
			break
		}
	}
	return ocispec.Descriptor{}, joinErrs(errs, reg+"/"+repository+":"+tag)
}

// Fill brings the image into the store and tags it storeName.
func (u *RegistryUpstream) Fill(ctx context.Context, reg, repository, reference, storeName string) (ocispec.Descriptor, error) {
	if err := blocks.ValidateName(storeName); err != nil {
		return ocispec.Descriptor{}, err
	}
	eps, err := u.endpoints(ctx, reg, repository, reference)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var errs []error
	var resolved ocispec.Descriptor
	for _, e := range eps {
		if _, tag := e.Ref.(name.Tag); tag && !e.Resolve {
			continue
		}
		desc, err := u.fillFrom(ctx, e, storeName)
		if err == nil {
			return desc, nil
		}
		if desc.Digest != "" {
			resolved = desc
		}
		errs = append(errs, u.explain(e, err))
		if ctx.Err() != nil {
			break
		}
	}
	return resolved, joinErrs(errs, reg+"/"+repository+refSep(reference)+reference)
}

// explain names the mirror an error came from and explains an
// authentication failure.
func (u *RegistryUpstream) explain(e transport.Endpoint, err error) error {
	err = u.reg.Explain(e.Ref, err)
	if e.Mirror {
		err = fmt.Errorf("mirror %s: %w", e.Host, err)
	}
	return err
}

// notFound marks a 404 to the request for the manifest a reference names
// as ErrUpstreamNotFound. (A 404 for a blob the manifest names is a broken
// upstream, not an unknown name: it is left as it is.)
func notFound(err error) error {
	var te *gtransport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %w", ErrUpstreamNotFound, err)
	}
	return err
}

func joinErrs(errs []error, ref string) error {
	switch len(errs) {
	case 0:
		return fmt.Errorf("%s: no endpoint may resolve tags (hosts.toml capabilities)", ref)
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

// fillFrom fills from one endpoint. A tag is resolved once and the digest
// it names is what is read, so the choice between the blocked form and a
// plain copy is made on the very content copied.
func (u *RegistryUpstream) fillFrom(ctx context.Context, e transport.Endpoint, storeName string) (ocispec.Descriptor, error) {
	opts := u.options(ctx, e)
	p, err := remote.NewPuller(opts...)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var dref name.Digest
	switch r := e.Ref.(type) {
	case name.Digest:
		dref = r
	case name.Tag:
		d, err := p.Head(ctx, r)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s: resolve: %w", r, notFound(err))
		}
		if err := digest.Digest(d.Digest.String()).Validate(); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s: registry answered digest %q: %w", r, d.Digest, err)
		}
		dref = r.Context().Digest(d.Digest.String())
	default:
		return ocispec.Descriptor{}, fmt.Errorf("%s: not a tag or digest reference", e.Ref)
	}
	resolved := ocispec.Descriptor{Digest: digest.Digest(dref.DigestStr())}
	got, err := p.Get(ctx, dref)
	if err != nil {
		return resolved, fmt.Errorf("%s: %w", dref, notFound(err))
	}
	root := ocispec.Descriptor{MediaType: string(got.MediaType), Digest: digest.FromBytes(got.Manifest), Size: int64(len(got.Manifest))}
	if root.Digest != resolved.Digest {
		return resolved, fmt.Errorf("%s: manifest hashes to %s: %w", dref, root.Digest, store.ErrDigestMismatch)
	}
	if root.Size > store.MaxJSONSize {
		return resolved, fmt.Errorf("%s: manifest of %d bytes is over the limit of %d", dref, root.Size, store.MaxJSONSize)
	}
	if !transport.IsIndex(root.MediaType) && !transport.IsManifest(root.MediaType) {
		return resolved, fmt.Errorf("%s: media type %q is not an image manifest or index", dref, root.MediaType)
	}
	if hasBlockedForm(root, got.Manifest) {
		res, err := registry.Pull(ctx, u.s, dref, storeName, registry.PullOptions{
			// e.HTTP lets the pull read runs of missing members as
			// Range GETs of the standard layer: far fewer requests.
			Remote: opts, HTTP: e.HTTP, Jobs: u.jobs, NoMaterialize: true,
			// serve has no referrers API to serve them through.
			Export: image.ExportOptions{NoReferrers: true},
		})
		if err != nil {
			return resolved, err
		}
		return res.Index, nil
	}
	if err := u.copyImage(ctx, p, dref, root, got.Manifest, storeName); err != nil {
		return resolved, err
	}
	return root, nil
}

func hasBlockedForm(root ocispec.Descriptor, data []byte) bool {
	if root.MediaType != ocispec.MediaTypeImageIndex {
		return false
	}
	var idx ocispec.Index
	return json.Unmarshal(data, &idx) == nil && idx.Annotations[blocks.AnnotationStandard] != ""
}

// Bounds on what a plain image may make serve read and hold: manifests in
// one image (a multi-platform index with attestations has a few dozen) and
// index nesting.
const (
	maxCopyManifests = 1024
	maxCopyDepth     = 4
)

// copier copies one image as it is: every manifest and blob it names,
// verified, into one store batch, then the tag.
type copier struct {
	s     *store.Store
	p     *remote.Puller
	repo  name.Repository
	docs  []ocispec.Descriptor // manifests read, children first
	data  map[digest.Digest][]byte
	blobs []ocispec.Descriptor
	seen  map[digest.Digest]bool
}

func (u *RegistryUpstream) copyImage(ctx context.Context, p *remote.Puller, ref name.Digest, root ocispec.Descriptor, rootData []byte, storeName string) (err error) {
	// gc must not sweep what is written (or found present) before the tag.
	release, err := u.s.Lease(ctx)
	if err != nil {
		return err
	}
	defer release()
	c := &copier{s: u.s, p: p, repo: ref.Context(), data: map[digest.Digest][]byte{root.Digest: rootData}, seen: map[digest.Digest]bool{}}
	if err := c.walk(ctx, root, 0); err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	batch := u.s.NewBatch()
	defer func() {
		if err != nil {
			batch.Discard()
		}
	}()
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(u.jobs)
	for _, b := range c.blobs {
		g.Go(func() error {
			w, err := c.fetch(gctx, b)
			if err != nil || w == nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			return batch.Add(gctx, w, b)
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	for _, d := range c.docs {
		if ok, err := u.s.Exists(ctx, d.Digest); err != nil {
			return err
		} else if ok {
			continue
		}
		w, err := u.s.NewWriter(ctx)
		if err != nil {
			return err
		}
		if _, err := w.Write(c.data[d.Digest]); err != nil {
			w.Close()
			return err
		}
		if err := batch.Add(ctx, w, d); err != nil {
			return fmt.Errorf("%s: manifest %s: %w", ref, d.Digest, err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	if err := u.s.Tag(ctx, storeName, root); err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	return nil
}

// walk reads the manifest or index desc (and its children, depth first)
// and lists the blobs they name.
func (c *copier) walk(ctx context.Context, desc ocispec.Descriptor, depth int) error {
	if c.seen[desc.Digest] {
		return nil
	}
	c.seen[desc.Digest] = true
	if depth > maxCopyDepth {
		return fmt.Errorf("manifest %s: nested more than %d deep", desc.Digest, maxCopyDepth)
	}
	if len(c.docs) >= maxCopyManifests {
		return fmt.Errorf("more than %d manifests in one image", maxCopyManifests)
	}
	data, ok := c.data[desc.Digest]
	if !ok {
		var err error
		if data, err = c.manifest(ctx, desc); err != nil {
			return err
		}
		c.data[desc.Digest] = data
	}
	var n struct {
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
		Manifests []ocispec.Descriptor `json:"manifests"`
		Subject   *ocispec.Descriptor  `json:"subject"`
	}
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	var children []ocispec.Descriptor
	if n.Config != nil {
		children = append(children, *n.Config)
	}
	children = append(children, n.Layers...)
	children = append(children, n.Manifests...)
	if n.Subject != nil {
		// The store's graph opens a subject (store.Children): a referrer
		// comes with the image it refers to.
		children = append(children, *n.Subject)
	}
	for _, ch := range children {
		ch = ocispec.Descriptor{MediaType: ch.MediaType, Digest: ch.Digest, Size: ch.Size}
		if err := ch.Digest.Validate(); err != nil {
			return fmt.Errorf("manifest %s: child digest %q: %w", desc.Digest, ch.Digest, err)
		}
		if ch.Size < 0 {
			return fmt.Errorf("manifest %s: child %s: negative size", desc.Digest, ch.Digest)
		}
		switch {
		case store.HasChildren(ch.MediaType):
			if err := c.walk(ctx, ch, depth+1); err != nil {
				return err
			}
		case foreignLayer(ch.MediaType) || c.seen[ch.Digest]:
			// Non-distributable layers are not in the registry.
		default:
			c.seen[ch.Digest] = true
			c.blobs = append(c.blobs, ch)
		}
	}
	c.docs = append(c.docs, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: int64(len(data))})
	return nil
}

func foreignLayer(mt string) bool {
	return strings.Contains(mt, "foreign") || strings.Contains(mt, "nondistributable")
}

// manifest reads desc by digest, verified against digest and size.
func (c *copier) manifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > store.MaxJSONSize {
		return nil, fmt.Errorf("manifest %s: %d bytes is over the limit of %d", desc.Digest, desc.Size, store.MaxJSONSize)
	}
	got, err := c.p.Get(ctx, c.repo.Digest(desc.Digest.String()))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if d := digest.FromBytes(got.Manifest); d != desc.Digest || int64(len(got.Manifest)) != desc.Size {
		return nil, fmt.Errorf("manifest %s: got %d bytes hashing to %s, want %d: %w", desc.Digest, len(got.Manifest), d, desc.Size, store.ErrDigestMismatch)
	}
	return got.Manifest, nil
}

// fetch downloads the blob b into a store writer, verified against its
// digest and size while it streams; nil when the store has it.
func (c *copier) fetch(ctx context.Context, b ocispec.Descriptor) (*store.BlobWriter, error) {
	if ok, err := c.s.Exists(ctx, b.Digest); err != nil || ok {
		return nil, err
	}
	l, err := c.p.Layer(ctx, c.repo.Digest(b.Digest.String()))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", b.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", b.Digest, err)
	}
	defer rc.Close()
	w, err := c.s.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(w, store.VerifyReader(rc, b)); err != nil {
		w.Close()
		return nil, fmt.Errorf("blob %s: %w", b.Digest, err)
	}
	return w, nil
}
