package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"
)

// Upstream reads images from registries to fill the store: serve decides
// when and from which registry (UpstreamOptions), an Upstream does the
// transfer. RegistryUpstream is the implementation (the blockfile pull
// path).
type Upstream interface {
	// Resolve returns the descriptor registry/repository:tag names now (a
	// HEAD request: what a tag filled earlier is checked against).
	// ErrUpstreamNotFound (wrapped) when the registry has no such tag.
	Resolve(ctx context.Context, registry, repository, tag string) (ocispec.Descriptor, error)
	// Fill brings registry/repository:reference (reference a tag or a
	// digest) into the store, every blob verified, and tags it storeName
	// (last: a failed fill tags nothing and leaves only unreferenced
	// blobs, which gc removes). It returns the descriptor tagged, which is
	// the one the registry serves for reference. On error the descriptor
	// holds the digest reference resolved to, when the fill got that far.
	Fill(ctx context.Context, registry, repository, reference, storeName string) (ocispec.Descriptor, error)
}

// A Marker is an Upstream that marks the requests it makes, so that serve
// refuses to fill a request that is its own fill coming back (serve's host
// has a hosts.toml naming serve as a mirror of its upstream): filling it
// would wait on itself.
type Marker interface {
	Marks(r *http.Request) bool
}

// ErrUpstreamNotFound is returned (wrapped) by an Upstream when the
// registry has no such repository, tag or digest (a 404): the client gets
// MANIFEST_UNKNOWN or NAME_UNKNOWN, not a server error.
var ErrUpstreamNotFound = errors.New("not found upstream")

// UpstreamOptions say where serve fills missing images from. With none of
// Registries and AnyNamespace, serve never fills.
type UpstreamOptions struct {
	// Upstream does the transfers.
	Upstream Upstream
	// Registries (host[:port]) are tried in order for a request without
	// ?ns=, or whose ?ns= is not one of them and not allowed by
	// AnyNamespace: as a registry mirror configured with one upstream
	// serves every name from it. A request whose ?ns= is one of them is
	// filled from that one only.
	Registries []string
	// AnyNamespace fills a request from the registry its ?ns= names
	// (containerd tells a mirror the registry it wants), whatever it is.
	// That lets any client that reaches serve make it connect to any host
	// (server-side request forgery): give it only where the clients are
	// trusted. Loopback, link-local and unspecified addresses are refused
	// even then, unless listed in Registries.
	AnyNamespace bool
	// TagTTL is how long a tag filled from upstream is served before the
	// next request for it resolves it upstream again (a HEAD: a new push
	// to the tag is seen within TagTTL). 0 resolves on every request for
	// the tag. Digests never change and are never resolved again. When the
	// registry cannot be reached, the stored image is served.
	TagTTL time.Duration
	// FillTimeout bounds one fill (0: DefaultFillTimeout).
	FillTimeout time.Duration
}

// DefaultFillTimeout bounds a fill, so that a stalled upstream connection
// does not hold the requests waiting on it forever.
const DefaultFillTimeout = 30 * time.Minute

// resolveTimeout bounds the HEAD that checks a tag: when the WAN is down,
// clients get the stored image after this long rather than an error.
const resolveTimeout = 10 * time.Second

// minRecheck is how long a failed check of a tag is not retried even with
// TagTTL 0, so that a down upstream costs each client resolveTimeout only
// once in a while.
const minRecheck = 10 * time.Second

// maxFills bounds the fills running at once (each downloads several blobs
// at a time); more wait, so distinct names from clients cannot open
// unbounded upstream connections.
const maxFills = 4

// filler fills the store from upstream for the server: it picks the
// registries for a request, runs one fill per reference however many
// requests ask at once, and remembers when each filled tag was last
// checked upstream.
type filler struct {
	opts UpstreamOptions
	ctx  context.Context // the server's: fills outlive the request that started them
	log  *slog.Logger
	sf   singleflight.Group
	sem  chan struct{}

	mu      sync.Mutex
	checked map[string]time.Time // store name -> last resolved (or filled) upstream
}

func newFiller(ctx context.Context, opts UpstreamOptions, log *slog.Logger) *filler {
	if opts.Upstream == nil || (len(opts.Registries) == 0 && !opts.AnyNamespace) {
		return nil
	}
	if opts.FillTimeout <= 0 {
		opts.FillTimeout = DefaultFillTimeout
	}
	regs := make([]string, 0, len(opts.Registries))
	for _, r := range opts.Registries {
		regs = append(regs, canonicalRegistry(r))
	}
	opts.Registries = regs
	return &filler{opts: opts, ctx: ctx, log: log, sem: make(chan struct{}, maxFills), checked: map[string]time.Time{}}
}

// canonicalRegistry names Docker Hub one way: containerd says docker.io,
// go-containerregistry index.docker.io, and the API host is
// registry-1.docker.io.
func canonicalRegistry(host string) string {
	switch host {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return host
}

// sources returns the registries a request may be filled from, in order:
// none when serve has no upstream or the request is serve's own fill
// coming back.
func (f *filler) sources(r *http.Request, ns string) []string {
	if f == nil {
		return nil
	}
	if m, ok := f.opts.Upstream.(Marker); ok && m.Marks(r) {
		return nil
	}
	if ns != "" {
		ns = canonicalRegistry(ns)
		if slices.Contains(f.opts.Registries, ns) || (f.opts.AnyNamespace && publicHost(ns)) {
			return []string{ns}
		}
	}
	return f.opts.Registries
}

// publicHost refuses, for ?ns= with AnyNamespace, the hosts that would let
// a client reach serve's own machine or the cloud metadata service by an
// address literal. (A DNS name can still point anywhere: AnyNamespace is
// for trusted clients.)
func publicHost(hostport string) bool {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if strings.EqualFold(h, "localhost") || strings.HasSuffix(strings.ToLower(h), ".localhost") {
		return false
	}
	ip := net.ParseIP(h)
	return ip == nil || !(ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsMulticast())
}

// fillName is the store name a fill of src/name:ref is tagged under. The
// registry stays in the name, so an image is only ever served for the
// registry it came from (catalog.lookup), and a tag filled upstream is told
// from one a bundle brought (upstreamOf).
func fillName(src, name, ref string) string {
	if isDigest(ref) {
		return src + "/" + name + "@" + ref
	}
	return src + "/" + name + ":" + ref
}

// upstreamOf returns the registry a tagged image was filled from, if it is
// one of srcs: only those images are resolved upstream again.
func upstreamOf(ti taggedImage, srcs []string, name, tag string) (string, bool) {
	for _, src := range srcs {
		if ti.name == fillName(src, name, tag) {
			return src, true
		}
	}
	return "", false
}

// fillFailed is the answer to a request whose fill failed: notFound when
// no registry has the reference, else a gateway error (the log has why).
func fillFailed(err error, notFound *apiError, ref string) *apiError {
	if errors.Is(err, ErrUpstreamNotFound) {
		return notFound
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return errf(http.StatusGatewayTimeout, codeUnknown, "filling from upstream did not finish (see the server log)", map[string]string{"reference": truncate(ref)})
	}
	return errf(http.StatusBadGateway, codeUnknown, "filling from upstream failed (see the server log)", map[string]string{"reference": truncate(ref)})
}

// fill brings name:ref (a tag or digest) into the store from the first of
// srcs that has it. Concurrent calls for one reference share one fill; it
// runs in the server's context, so a client that goes away does not cancel
// it for the others (and its retry finds the image). Each failure is
// logged once, on one line naming the reference and the digest.
func (f *filler) fill(ctx context.Context, srcs []string, name, ref string) error {
	key := "fill\x00" + strings.Join(srcs, ",") + "\x00" + name + "\x00" + ref
	ch := f.sf.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(f.ctx, f.opts.FillTimeout)
		defer cancel()
		select {
		case f.sem <- struct{}{}:
		case <-fctx.Done():
			return nil, fctx.Err()
		}
		defer func() { <-f.sem }()
		var errs []error
		for _, src := range srcs {
			sn := fillName(src, name, ref)
			start := time.Now()
			desc, err := f.opts.Upstream.Fill(fctx, src, name, ref, sn)
			if err == nil {
				f.markChecked(sn)
				f.log.Info("filled from upstream", "ref", src+"/"+name+refSep(ref)+ref, "digest", desc.Digest, "name", sn, "duration", time.Since(start).Round(time.Millisecond))
				return nil, nil
			}
			if errors.Is(err, ErrUpstreamNotFound) {
				f.log.Info("not found upstream", "ref", src+"/"+name+refSep(ref)+ref)
			} else {
				f.log.Error("upstream fill failed", "ref", src+"/"+name+refSep(ref)+ref, "digest", digestOr(desc.Digest, ref), "err", err)
			}
			errs = append(errs, err)
			if fctx.Err() != nil {
				break
			}
		}
		// Not found anywhere is not found; any other failure is the error.
		for _, err := range errs {
			if !errors.Is(err, ErrUpstreamNotFound) {
				return nil, err
			}
		}
		return nil, errors.Join(errs...)
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func refSep(ref string) string {
	if isDigest(ref) {
		return "@"
	}
	return ":"
}

// digestOr is the digest a failed fill resolved to, else the reference's
// own when it is one, else "unresolved".
func digestOr(d digest.Digest, ref string) string {
	if d != "" {
		return d.String()
	}
	if isDigest(ref) {
		return ref
	}
	return "unresolved"
}

func (f *filler) markChecked(storeName string) {
	f.mu.Lock()
	f.checked[storeName] = time.Now()
	f.mu.Unlock()
}

// refresh resolves the tag of ti, filled from src, upstream again when its
// last check is older than TagTTL, and fills it again when it moved. When
// the registry cannot be reached or the new fill fails, the stored image
// stays what the tag serves (logged).
func (f *filler) refresh(ctx context.Context, ti taggedImage, src, name, tag string) {
	f.mu.Lock()
	last, ok := f.checked[ti.name]
	f.mu.Unlock()
	if ok && time.Since(last) < max(f.opts.TagTTL, 0) {
		return
	}
	key := "resolve\x00" + ti.name
	ch := f.sf.DoChan(key, func() (any, error) {
		f.mu.Lock()
		last, ok := f.checked[ti.name]
		f.mu.Unlock()
		if ok && time.Since(last) < max(f.opts.TagTTL, 0) {
			return nil, nil // checked while this call waited for the group
		}
		rctx, cancel := context.WithTimeout(f.ctx, resolveTimeout)
		desc, err := f.opts.Upstream.Resolve(rctx, src, name, tag)
		cancel()
		if err != nil {
			// Do not ask again at once: a down WAN would cost every
			// client resolveTimeout.
			// (checked is compared with TagTTL: the next check comes
			// after max(TagTTL, minRecheck).)
			f.mu.Lock()
			f.checked[ti.name] = time.Now().Add(max(0, minRecheck-f.opts.TagTTL))
			f.mu.Unlock()
			f.log.Warn("upstream resolve failed; serving the stored image", "ref", src+"/"+name+":"+tag, "digest", ti.desc.Digest, "err", err)
			return nil, nil
		}
		if desc.Digest == ti.desc.Digest {
			f.markChecked(ti.name)
			return nil, nil
		}
		f.log.Info("tag moved upstream", "ref", src+"/"+name+":"+tag, "from", ti.desc.Digest, "to", desc.Digest)
		// A failure is logged by fill; the stored image is served.
		_ = f.fill(f.ctx, []string{src}, name, tag)
		return nil, nil
	})
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// String is for logs.
func (o UpstreamOptions) String() string {
	regs := append([]string{}, o.Registries...)
	if o.AnyNamespace {
		regs = append(regs, "*")
	}
	return fmt.Sprintf("%s (tag TTL %s)", strings.Join(regs, ", "), o.TagTTL)
}

// CheckRegistry checks an upstream registry given by a user: host[:port],
// as containerd's ?ns= names one (no scheme, no path).
func CheckRegistry(host string) error {
	if len(host) > maxNameLen || !domainRe.MatchString(host) {
		return fmt.Errorf("upstream registry %q: want HOST[:PORT] (no scheme, no path)", truncate(host))
	}
	return nil
}
