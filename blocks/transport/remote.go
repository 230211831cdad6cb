package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// parseRemote parses a docker:// reference. Registries on a loopback
// address (127.0.0.1:PORT, localhost, [::1]) are spoken to over plain HTTP,
// as BuildKit and skopeo's tests do.
func parseRemote(ref string) (name.Reference, error) {
	var opts []name.Option
	if isLoopback(ref) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("docker://%s: %w", ref, err)
	}
	return r, nil
}

func isLoopback(ref string) bool {
	host, _, ok := strings.Cut(ref, "/")
	return ok && isLoopbackHost(host)
}

// remoteSource reads an image from a registry, through its hosts.toml
// mirrors first when it has any.
type remoteSource struct {
	reg Registry
	ref name.Reference // the reference as the user named it, for messages
	eps []Endpoint
	mu  sync.Mutex
	cur int // the endpoint that resolved, tried first by Fetch
}

func openRemoteSource(ctx context.Context, reg Registry, ref string) (*remoteSource, error) {
	r, err := parseRemote(ref)
	if err != nil {
		return nil, err
	}
	eps, err := reg.PullEndpoints(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &remoteSource{reg: reg, ref: r, eps: eps}, nil
}

// try runs f against each endpoint, the one that last succeeded first,
// until one succeeds. When all fail it returns the registry's own error
// (explained if it is an authentication failure), the mirrors' being
// secondary.
func (s *remoteSource) try(f func(e Endpoint) error) error {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	var errs []error
	var server error
	for i := range s.eps {
		j := (cur + i) % len(s.eps)
		e := s.eps[j]
		err := f(e)
		if err == nil {
			s.mu.Lock()
			s.cur = j
			s.mu.Unlock()
			return nil
		}
		err = s.reg.Explain(e.Ref, err)
		if e.Mirror {
			errs = append(errs, fmt.Errorf("mirror %s: %w", e.Host, err))
		} else {
			server = err
		}
	}
	if server == nil {
		return errors.Join(errs...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w (mirrors failed too: %v)", server, errors.Join(errs...))
	}
	return server
}

func (s *remoteSource) Resolve(ctx context.Context) (ocispec.Descriptor, error) {
	var d *v1.Descriptor
	_, byDigest := s.ref.(name.Digest)
	err := s.try(func(e Endpoint) error {
		if !e.Resolve && !byDigest {
			return fmt.Errorf("host %s may not resolve tags (hosts.toml capabilities)", e.Host)
		}
		var err error
		d, err = remote.Head(e.Ref, append(e.Options, remote.WithContext(ctx))...)
		return err
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("docker://%s: resolve: %w", s.ref, err)
	}
	return rootDescriptor(ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size}, "docker://"+s.ref.String())
}

func (s *remoteSource) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("docker://%s: blob digest %q: %w", s.ref, desc.Digest, err)
	}
	if IsManifest(desc.MediaType) || IsIndex(desc.MediaType) {
		var data []byte
		err := s.try(func(e Endpoint) error {
			d, err := remote.Get(e.Ref.Context().Digest(desc.Digest.String()), append(e.Options, remote.WithContext(ctx))...)
			if err != nil {
				return err
			}
			data = d.Manifest
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("docker://%s: manifest %s: %w", s.ref.Context(), desc.Digest, err)
		}
		vr, err := newVerifyReader(bytes.NewReader(data), desc)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(vr), nil
	}
	var rc io.ReadCloser
	err := s.try(func(e Endpoint) error {
		l, err := remote.Layer(e.Ref.Context().Digest(desc.Digest.String()), append(e.Options, remote.WithContext(ctx))...)
		if err != nil {
			return err
		}
		rc, err = l.Compressed()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("docker://%s: blob %s: %w", s.ref.Context(), desc.Digest, err)
	}
	vr, err := newVerifyReader(rc, desc)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return readCloser{vr, rc}, nil
}

func (s *remoteSource) Close() error { return nil }

// remoteSink pushes blobs and manifests by digest and tags the root at
// Commit, so an aborted push leaves only unreferenced blobs (which the
// registry's garbage collector removes) and no tag.
type remoteSink struct {
	reg       Registry
	ref       name.Reference
	opts      []remote.Option
	mu        sync.Mutex
	manifests map[digest.Digest]rawManifest
	done      bool
}

func newRemoteSink(ctx context.Context, reg Registry, ref string) (*remoteSink, error) {
	r, opts, err := reg.Remote(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &remoteSink{reg: reg, ref: r, opts: opts, manifests: map[digest.Digest]rawManifest{}}, nil
}

type rawManifest struct {
	data      []byte
	mediaType string
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.data, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.MediaType(m.mediaType), nil }

func (s *remoteSink) Exists(ctx context.Context, desc ocispec.Descriptor) (bool, error) {
	opts := append(s.opts, remote.WithContext(ctx))
	at := s.ref.Context().Digest(desc.Digest.String())
	if IsManifest(desc.MediaType) || IsIndex(desc.MediaType) {
		_, err := remote.Head(at, opts...)
		if err != nil {
			if isNotFound(err) {
				return false, nil
			}
			return false, fmt.Errorf("docker://%s: manifest %s: %w", s.ref.Context(), desc.Digest, s.reg.Explain(s.ref, err))
		}
		return true, nil
	}
	l, err := remote.Layer(at, opts...)
	if err != nil {
		return false, fmt.Errorf("docker://%s: blob %s: %w", s.ref.Context(), desc.Digest, s.reg.Explain(s.ref, err))
	}
	ex, ok := l.(interface{ Exists() (bool, error) })
	if !ok {
		return false, nil
	}
	found, err := ex.Exists()
	if err != nil {
		return false, fmt.Errorf("docker://%s: blob %s: %w", s.ref.Context(), desc.Digest, s.reg.Explain(s.ref, err))
	}
	return found, nil
}

func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}

func (s *remoteSink) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	if s.done {
		return fmt.Errorf("docker://%s: push after commit or abort", s.ref)
	}
	opts := append(s.opts, remote.WithContext(ctx))
	vr, err := newVerifyReader(r, desc)
	if err != nil {
		return err
	}
	if IsManifest(desc.MediaType) || IsIndex(desc.MediaType) {
		if desc.Size > maxJSON {
			return fmt.Errorf("docker://%s: manifest %s: %d bytes is too large", s.ref.Context(), desc.Digest, desc.Size)
		}
		data, err := io.ReadAll(vr)
		if err != nil {
			return fmt.Errorf("docker://%s: manifest %s: %w", s.ref.Context(), desc.Digest, s.reg.Explain(s.ref, err))
		}
		m := rawManifest{data: data, mediaType: desc.MediaType}
		if err := remote.Put(s.ref.Context().Digest(desc.Digest.String()), m, opts...); err != nil {
			return fmt.Errorf("docker://%s: push manifest %s: %w", s.ref.Context(), desc.Digest, s.reg.Explain(s.ref, err))
		}
		s.mu.Lock()
		s.manifests[desc.Digest] = m
		s.mu.Unlock()
		return nil
	}
	l := &pushLayer{desc: desc, r: vr}
	if err := remote.WriteLayer(s.ref.Context(), l, opts...); err != nil {
		return fmt.Errorf("docker://%s: push blob %s: %w", s.ref.Context(), desc.Digest, s.reg.Explain(s.ref, err))
	}
	return nil
}

func (s *remoteSink) Commit(ctx context.Context, root ocispec.Descriptor) error {
	if s.done {
		return fmt.Errorf("docker://%s: commit after commit or abort", s.ref)
	}
	opts := append(s.opts, remote.WithContext(ctx))
	if d, ok := s.ref.(name.Digest); ok {
		// A digest reference names the content; there is nothing to tag.
		if d.DigestStr() != root.Digest.String() {
			return fmt.Errorf("docker://%s: the image is %s, not the digest named", s.ref, root.Digest)
		}
		s.done = true
		return nil
	}
	s.mu.Lock()
	m, ok := s.manifests[root.Digest]
	s.mu.Unlock()
	if !ok {
		d, err := remote.Get(s.ref.Context().Digest(root.Digest.String()), opts...)
		if err != nil {
			return fmt.Errorf("docker://%s: commit: root %s: %w", s.ref, root.Digest, s.reg.Explain(s.ref, err))
		}
		m = rawManifest{data: d.Manifest, mediaType: string(d.MediaType)}
	}
	if err := remote.Put(s.ref, m, opts...); err != nil {
		return fmt.Errorf("docker://%s: tag %s: %w", s.ref, root.Digest, s.reg.Explain(s.ref, err))
	}
	s.done = true
	return nil
}

func (s *remoteSink) Abort() error {
	s.done = true
	return nil
}

// pushLayer is a v1.Layer over one verified stream, for remote.WriteLayer.
// It can be read once: a retried upload fails instead of sending wrong data.
type pushLayer struct {
	desc ocispec.Descriptor
	r    io.Reader
	used bool
	mu   sync.Mutex
}

var errNotImplemented = errors.New("not available for a pushed blob")

func (l *pushLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }
func (l *pushLayer) DiffID() (v1.Hash, error) { return v1.Hash{}, errNotImplemented }
func (l *pushLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *pushLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *pushLayer) Uncompressed() (io.ReadCloser, error) { return nil, errNotImplemented }
func (l *pushLayer) Compressed() (io.ReadCloser, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used {
		return nil, fmt.Errorf("blob %s: the stream was already sent once and cannot be retried", l.desc.Digest)
	}
	l.used = true
	return io.NopCloser(l.r), nil
}
