package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// ErrBadReference is returned (wrapped) for an image reference whose
// transport is unknown or whose location is empty: a usage error.
var ErrBadReference = errors.New("bad image reference")

// Source reads one image (a manifest or an index and everything below it).
type Source interface {
	// Resolve returns the root manifest or index (media type, digest, size).
	Resolve(ctx context.Context) (ocispec.Descriptor, error)
	// Fetch opens a blob or manifest by descriptor. The reader verifies size
	// and digest: Read returns an error at EOF on a mismatch.
	Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
	Close() error
}

// Sink writes one image. Callers push blobs before the manifests that name
// them, children before their index, then Commit the root; until Commit
// nothing is visible at the destination, and Abort leaves it absent (or, for
// an existing oci: directory, as it was).
type Sink interface {
	// Push writes one blob, verifying it against desc while streaming. A blob
	// already present is not an error (r may then be left unread).
	Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error
	Exists(ctx context.Context, desc ocispec.Descriptor) (bool, error)
	// Commit makes root the image at the destination: tags it, writes the
	// index, renames the file into place.
	Commit(ctx context.Context, root ocispec.Descriptor) error
	// Abort discards everything written since the sink was opened. It is
	// safe to call after Commit (it then does nothing).
	Abort() error
}

// Option configures ParseSource and ParseSink.
type Option func(*config)

// SinkOption configures ParseSink; every Option is one.
type SinkOption = Option

type config struct {
	defaultName string
	registry    Registry
}

// WithRegistry sets how docker:// references are reached (credentials,
// TLS, plain HTTP, hosts.toml); the zero Registry is the default.
func WithRegistry(r Registry) Option {
	return func(c *config) { c.registry = r }
}

// WithDefaultName names the image at a file destination (oci:, oci-archive:)
// whose reference has no REF part, so that `ctr images import` and
// `docker load` give the loaded image that name.
func WithDefaultName(name string) SinkOption {
	return func(c *config) { c.defaultName = name }
}

// ParseSource opens oci:DIR[:REF], oci-archive:FILE[:REF],
// docker-archive:FILE[:REF|:@N] (docker save output) or docker://REF.
func ParseSource(ctx context.Context, ref string, opts ...Option) (Source, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	kind, rest, err := splitTransport(ref)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "oci":
		dir, name := splitPathRef(rest)
		return openLayoutSource(dir, name)
	case "oci-archive":
		file, name := splitPathRef(rest)
		return openArchiveSource(ctx, file, name)
	case "docker-archive":
		file, name := splitPathRef(rest)
		return openDockerArchiveSource(ctx, file, name)
	default:
		return openRemoteSource(ctx, cfg.registry, rest)
	}
}

// ParseSink opens oci:DIR[:REF], oci-archive:FILE[:REF] or docker://REF for
// writing.
func ParseSink(ctx context.Context, ref string, opts ...SinkOption) (Sink, error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	kind, rest, err := splitTransport(ref)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "docker-archive":
		return nil, fmt.Errorf("image reference %q: docker-archive: is a source only; write oci-archive:FILE (docker load reads it): %w", ref, ErrBadReference)
	case "oci":
		dir, name := splitPathRef(rest)
		if name == "" {
			name = cfg.defaultName
		}
		return newLayoutSink(dir, name)
	case "oci-archive":
		file, name := splitPathRef(rest)
		if name == "" {
			name = cfg.defaultName
		}
		return newArchiveSink(file, name)
	default:
		return newRemoteSink(ctx, cfg.registry, rest)
	}
}

func splitTransport(ref string) (kind, rest string, err error) {
	switch {
	case strings.HasPrefix(ref, "oci:"):
		kind, rest = "oci", strings.TrimPrefix(ref, "oci:")
	case strings.HasPrefix(ref, "oci-archive:"):
		kind, rest = "oci-archive", strings.TrimPrefix(ref, "oci-archive:")
	case strings.HasPrefix(ref, "docker-archive:"):
		kind, rest = "docker-archive", strings.TrimPrefix(ref, "docker-archive:")
	case strings.HasPrefix(ref, "docker://"):
		kind, rest = "docker", strings.TrimPrefix(ref, "docker://")
	default:
		return "", "", fmt.Errorf("image reference %q: want oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF] (sources) or docker://REF: %w", ref, ErrBadReference)
	}
	if rest == "" {
		return "", "", fmt.Errorf("image reference %q: empty location: %w", ref, ErrBadReference)
	}
	return kind, rest, nil
}

// splitPathRef splits DIR[:REF] at the first colon, as skopeo does, so that a
// REF may itself hold colons (oci:/tmp/x:registry:5000/app:1).
func splitPathRef(s string) (path, ref string) {
	if i := strings.IndexByte(s, ':'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}

// Media type families.

// IsIndex reports whether mt is an OCI image index or a Docker manifest list.
func IsIndex(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == MediaTypeDockerManifestList
}

// IsManifest reports whether mt is an OCI image manifest or a Docker schema2 manifest.
func IsManifest(mt string) bool {
	return mt == ocispec.MediaTypeImageManifest || mt == MediaTypeDockerManifest
}

// Docker schema2 media types.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerLayerTar     = "application/vnd.docker.image.rootfs.diff.tar"
	MediaTypeDockerLayerZstd    = "application/vnd.docker.image.rootfs.diff.tar.zstd"
	MediaTypeDockerForeignGzip  = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// copyBufSize is the buffer of blob copies: large enough that a copy is a
// few big writes, small enough to keep memory flat.
const copyBufSize = 256 << 10

// maxJSON caps every manifest, index and index.json read into memory
// (registries cap manifests at 4 MiB; index.json of a big layout is larger).
const maxJSON = 32 << 20

// readJSON reads a small, verified JSON blob into v.
func readJSON(rc io.ReadCloser, what string, v any) error {
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxJSON+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	if len(data) > maxJSON {
		return fmt.Errorf("read %s: larger than %d bytes", what, maxJSON)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parse %s: %w", what, err)
	}
	return nil
}

// selectRoot picks the image named ref from an index.json (see package doc).
func selectRoot(idx ocispec.Index, ref, where string) (ocispec.Descriptor, error) {
	var names []string
	for _, m := range idx.Manifests {
		if n := m.Annotations[ocispec.AnnotationRefName]; n != "" {
			// Names read from a file are printed quoted if need be.
			names = append(names, blocks.Quote(n))
		}
	}
	sort.Strings(names)
	if ref == "" {
		if len(idx.Manifests) == 1 {
			return rootDescriptor(idx.Manifests[0], where)
		}
		if len(idx.Manifests) == 0 {
			return ocispec.Descriptor{}, fmt.Errorf("%s: index.json lists no image", where)
		}
		return ocispec.Descriptor{}, fmt.Errorf("%s: index.json lists %d images, name one with :REF (names: %s)", where, len(idx.Manifests), strings.Join(names, ", "))
	}
	var found []ocispec.Descriptor
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] == ref {
			found = append(found, m)
		}
	}
	if len(found) == 0 {
		// ctr export and BuildKit name images with the containerd annotation.
		for _, m := range idx.Manifests {
			if n := m.Annotations[annotationContainerdName]; n != "" && (n == ref || n == normalizeName(ref)) {
				found = append(found, m)
			}
		}
	}
	switch len(found) {
	case 0:
		return ocispec.Descriptor{}, fmt.Errorf("%s: no image named %s (names: %s)", where, blocks.Quote(ref), strings.Join(names, ", "))
	case 1:
		return rootDescriptor(found[0], where)
	default:
		if allSame(found) {
			return rootDescriptor(found[0], where)
		}
		return ocispec.Descriptor{}, fmt.Errorf("%s: %d different images are named %s", where, len(found), blocks.Quote(ref))
	}
}

func allSame(ds []ocispec.Descriptor) bool {
	for _, d := range ds[1:] {
		if d.Digest != ds[0].Digest {
			return false
		}
	}
	return true
}

func rootDescriptor(d ocispec.Descriptor, where string) (ocispec.Descriptor, error) {
	if !IsIndex(d.MediaType) && !IsManifest(d.MediaType) {
		return ocispec.Descriptor{}, fmt.Errorf("%s: image %s has media type %q, want an image manifest or index", where, d.Digest, d.MediaType)
	}
	if err := d.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%s: image digest %q: %w", where, d.Digest, err)
	}
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}, nil
}

// annotationContainerdName is how containerd (ctr images import/export)
// names an image in index.json.
const annotationContainerdName = "io.containerd.image.name"

// normalizeName returns the fully qualified image name containerd uses
// (docker.io/library/app:latest), or "" if ref is not an image name.
func normalizeName(ref string) string {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return ""
	}
	return named.String()
}

// familiarName returns the short name docker load shows (app:latest), or "".
func familiarName(ref string) string {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return ""
	}
	if _, ok := named.(reference.Tagged); !ok {
		return ""
	}
	return reference.FamiliarString(named)
}

// looksLikeImageName reports whether ref is a full image name (has a
// repository and a tag, or a registry/path) rather than a bare tag like "v1".
func looksLikeImageName(ref string) bool {
	if !strings.ContainsAny(ref, ":/@") {
		return false
	}
	return normalizeName(ref) != ""
}

// refAnnotations are the index.json annotations naming an image ref.
func refAnnotations(ref string) map[string]string {
	if ref == "" {
		return nil
	}
	a := map[string]string{ocispec.AnnotationRefName: ref}
	if looksLikeImageName(ref) {
		a[annotationContainerdName] = normalizeName(ref)
	}
	return a
}

// newVerifyReader checks r against desc while it streams (see
// store.VerifyReader); a malformed digest is refused up front so it can never
// name a path.
func newVerifyReader(r io.Reader, desc ocispec.Descriptor) (io.Reader, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %w", desc.Digest, err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d", desc.Digest, desc.Size)
	}
	if v, ok := r.(verified); ok {
		return &sizeReader{r: v.Reader, desc: desc}, nil
	}
	return store.VerifyReader(r, desc), nil
}

// Verified marks r as a stream that its producer checks against the
// descriptor it is pushed under, failing the stream (an error instead of
// io.EOF) on any mismatch, as layer.Hydrate does for the layer it writes.
// Sinks then check only its size instead of hashing every byte a second time.
func Verified(r io.Reader) io.Reader { return verified{r} }

type verified struct{ io.Reader }

// sizeReader checks that a Verified stream has exactly desc.Size bytes.
type sizeReader struct {
	r    io.Reader
	desc ocispec.Descriptor
	n    int64
}

func (s *sizeReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.n > s.desc.Size {
		return n, fmt.Errorf("blob %s: more than %d bytes: %w", s.desc.Digest, s.desc.Size, store.ErrSizeMismatch)
	}
	if err == io.EOF && s.n != s.desc.Size {
		return n, fmt.Errorf("blob %s: %d bytes, want %d: %w", s.desc.Digest, s.n, s.desc.Size, store.ErrSizeMismatch)
	}
	return n, err
}

// IsVerifyError reports whether err says that content did not match its
// descriptor (digest or size).
func IsVerifyError(err error) bool {
	return errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch)
}

type readCloser struct {
	io.Reader
	io.Closer
}
