package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	bftransport "github.com/blockfile/blockfile/blocks/transport"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks/store"
)

// maxManifest bounds one manifest or index read from a registry (the store's
// own limit for JSON documents).
const maxManifest = store.MaxJSONSize

// maxMeta bounds all the manifests of one pull held in memory at once.
const maxMeta = 256 << 20

func (c *Count) add(n int64) { c.Blobs++; c.Bytes += n }

// repo reads and writes one repository of a registry. The byte counter
// counts what crosses the network in request or response bodies.
//
// One Puller and one Pusher serve every request of a push or pull: they
// keep the authenticated transport (one ping and token per repository, not
// one per blob, which made a pull of 550 blobs three times slower).
type repo struct {
	ref    name.Reference // as given (tag or digest)
	repo   name.Repository
	opts   []remote.Option // for what Puller and Pusher do not cover (referrers)
	puller *remote.Puller
	pusher *remote.Pusher
	down   atomic.Int64
}

func newRepo(ref name.Reference, opts []remote.Option) (*repo, error) {
	puller, err := remote.NewPuller(opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	pusher, err := remote.NewPusher(opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return &repo{ref: ref, repo: ref.Context(), opts: opts, puller: puller, pusher: pusher}, nil
}

// getManifest reads a manifest or index by reference, checks its size and,
// when ref is a digest, its digest, and returns it with its descriptor.
func (r *repo) getManifest(ctx context.Context, ref name.Reference) ([]byte, ocispec.Descriptor, error) {
	d, err := r.puller.Get(ctx, ref)
	if err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("%s: %w", ref, explain(err))
	}
	data := d.Manifest
	r.down.Add(int64(len(data)))
	if len(data) > maxManifest {
		return nil, ocispec.Descriptor{}, fmt.Errorf("%s: manifest of %d bytes is over the limit of %d", ref, len(data), maxManifest)
	}
	got := digest.FromBytes(data)
	if dr, ok := ref.(name.Digest); ok && dr.DigestStr() != got.String() {
		return nil, ocispec.Descriptor{}, fmt.Errorf("%s: content hashes to %s: %w", ref, got, store.ErrDigestMismatch)
	}
	return data, ocispec.Descriptor{MediaType: string(d.MediaType), Digest: got, Size: int64(len(data))}, nil
}

// manifest reads the manifest desc by digest and checks it against desc.
func (r *repo) manifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%s: manifest digest %q: %w", r.repo, desc.Digest, err)
	}
	if desc.Size < 0 || desc.Size > maxManifest {
		return nil, fmt.Errorf("%s: manifest %s: size %d is not that of a manifest (limit %d)", r.repo, desc.Digest, desc.Size, maxManifest)
	}
	data, got, err := r.getManifest(ctx, r.repo.Digest(desc.Digest.String()))
	if err != nil {
		return nil, err
	}
	if got.Size != desc.Size {
		return nil, fmt.Errorf("%s: manifest %s: %d bytes, want %d: %w", r.repo, desc.Digest, got.Size, desc.Size, store.ErrSizeMismatch)
	}
	return data, nil
}

// openBlob streams the blob desc; the reader fails (instead of EOF) when
// the bytes do not match desc's digest and size, and never reads past
// desc.Size.
func (r *repo) openBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%s: blob digest %q: %w", r.repo, desc.Digest, err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("%s: blob %s: negative size", r.repo, desc.Digest)
	}
	l, err := r.puller.Layer(ctx, r.repo.Digest(desc.Digest.String()))
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", r.repo, desc.Digest, explain(err))
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", r.repo, desc.Digest, explain(err))
	}
	counted := &countReader{r: rc, n: &r.down}
	return &blobReader{r: store.VerifyReader(counted, desc), c: rc, desc: desc, repo: r.repo}, nil
}

// blobReader names the blob in read errors (a digest mismatch above all).
type blobReader struct {
	r    io.Reader
	c    io.Closer
	desc ocispec.Descriptor
	repo name.Repository
}

func (b *blobReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: blob %s: %w", b.repo, b.desc.Digest, err)
	}
	return n, err
}

func (b *blobReader) Close() error { return b.c.Close() }

type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// blobExists asks the registry (HEAD) whether the repository has d.
func (r *repo) blobExists(ctx context.Context, d digest.Digest) (bool, error) {
	l, err := r.puller.Layer(ctx, r.repo.Digest(d.String()))
	if err != nil {
		return false, err
	}
	ex, ok := l.(interface{ Exists() (bool, error) })
	if !ok {
		return false, nil
	}
	return ex.Exists()
}

// putManifest uploads a manifest or index under ref (its digest, or the tag).
func (r *repo) putManifest(ctx context.Context, ref name.Reference, mediaType string, data []byte) error {
	if err := r.pusher.Put(ctx, ref, typedManifest{data: data, mediaType: mediaType}); err != nil {
		return fmt.Errorf("%s: put manifest %s: %w", ref, digest.FromBytes(data), explain(err))
	}
	return nil
}

type typedManifest struct {
	data      []byte
	mediaType string
}

func (m typedManifest) RawManifest() ([]byte, error)        { return m.data, nil }
func (m typedManifest) MediaType() (types.MediaType, error) { return types.MediaType(m.mediaType), nil }

// explain turns the registry's answers users meet most into one line.
func explain(err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	switch te.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("the registry refused the credentials or asked for some (log in, or pass --authfile): %w", err)
	case http.StatusForbidden:
		return fmt.Errorf("access denied by the registry: %w", err)
	}
	return err
}

// metaFetcher serves the manifests and indexes of one pull to bundle.Walk:
// each is read from the registry once, verified, and kept in memory
// (bounded by maxMeta) until the pull writes them into the store.
type metaFetcher struct {
	r    *repo
	mu   sync.Mutex
	docs map[digest.Digest][]byte
	held int64
}

func (m *metaFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	m.mu.Lock()
	data, ok := m.docs[desc.Digest]
	m.mu.Unlock()
	if !ok {
		var err error
		if data, err = m.r.manifest(ctx, desc); err != nil {
			return nil, err
		}
		m.mu.Lock()
		if m.held+int64(len(data)) > maxMeta {
			m.mu.Unlock()
			return nil, fmt.Errorf("%s: the image's manifests exceed %d bytes", m.r.repo, maxMeta)
		}
		m.docs[desc.Digest] = data
		m.held += int64(len(data))
		m.mu.Unlock()
	}
	return io.NopCloser(store.VerifyReader(bytes.NewReader(data), desc)), nil
}

// prefetch reads the manifests of the index idx that s lacks, jobs at a
// time, into m, so that the walk that follows finds them rather than
// reading them one after the other (a round trip each). Errors are left
// to the walk, which asks again and reports them.
func (m *metaFetcher) prefetch(ctx context.Context, s *store.Store, idx ocispec.Index, jobs int) {
	var g errgroup.Group
	g.SetLimit(jobs)
	for _, d := range idx.Manifests {
		if !bftransport.IsManifest(d.MediaType) && !bftransport.IsIndex(d.MediaType) || d.Size > maxManifest {
			continue
		}
		if ok, err := s.Exists(ctx, d.Digest); err != nil || ok {
			continue
		}
		g.Go(func() error {
			if rc, err := m.Fetch(ctx, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}); err == nil {
				rc.Close()
			}
			return nil
		})
	}
	g.Wait()
}

// uploadLayer is a store blob as a go-containerregistry layer, for upload:
// Compressed re-opens the blob (verifying) on every call, so a retried
// upload starts again from the store. Bytes read are counted.
type uploadLayer struct {
	ctx  context.Context
	s    *store.Store
	desc ocispec.Descriptor
	read atomic.Int64
	prog *progress
}

func (l *uploadLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }
func (l *uploadLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{}, errors.New("registry push: the diffID of a stored blob is not needed")
}
func (l *uploadLayer) Size() (int64, error) { return l.desc.Size, nil }
func (l *uploadLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *uploadLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, errors.New("registry push: stored blobs are uploaded as they are")
}

func (l *uploadLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.s.Fetch(l.ctx, l.desc)
	if err != nil {
		return nil, err
	}
	return &uploadReader{rc: rc, l: l}, nil
}

type uploadReader struct {
	rc io.ReadCloser
	l  *uploadLayer
}

func (u *uploadReader) Read(p []byte) (int, error) {
	n, err := u.rc.Read(p)
	u.l.read.Add(int64(n))
	u.l.prog.add(int64(n))
	return n, err
}

func (u *uploadReader) Close() error { return u.rc.Close() }
