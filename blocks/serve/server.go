package serve

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// Options configure a Server.
type Options struct {
	// KeepHydrated keeps every layer hydrated on demand in the store (the
	// next pull reads it as it is; the store grows by the standard layers).
	// Otherwise a hydrated layer is dropped once its last reader is done
	// and Linger has passed, and the store keeps only the blocked form.
	KeepHydrated bool
	// Linger is how long a hydrated layer that is not kept stays for new
	// requests after its last reader (0: DefaultLinger).
	Linger time.Duration
	// Upstream, if it names registries, fills the store with the images
	// clients ask for and it lacks.
	Upstream UpstreamOptions
	// Log receives hydrations, fills and failures (nil: discarded).
	Log *slog.Logger
}

// DefaultLinger covers a wave of nodes pulling one image within a minute.
const DefaultLinger = time.Minute

// Server is the site mirror's HTTP handler.
type Server struct {
	s    *store.Store
	cat  *catalog
	hyd  *hydrator
	fill *filler // nil: no upstream
	log  *slog.Logger
}

// New returns a Server reading the store s. ctx bounds the hydrations and
// fills it runs on behalf of requests (they outlive a request, as other
// requests may be following them): cancel it at shutdown.
func New(ctx context.Context, s *store.Store, opts Options) *Server {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	linger := opts.Linger
	if linger <= 0 {
		linger = DefaultLinger
	}
	// Layers a killed serve was hydrating (and keeping): their files are
	// unlocked now. Another serve on the same store keeps its own locked.
	// (The sweep of the next lease would remove them too, a minute later.)
	if n, err := s.RemoveAbandonedTemps(tempName); err != nil {
		log.Warn("remove abandoned hydrations", "err", err)
	} else if n > 0 {
		log.Info("removed abandoned hydrations", "files", n)
	}
	return &Server{
		s:   s,
		cat: newCatalog(s),
		hyd: &hydrator{s: s, keep: opts.KeepHydrated, linger: linger, log: log, ctx: ctx, fileBudget: layoutFileBudget(),
			sem: make(chan struct{}, max(2, runtime.GOMAXPROCS(0))), jobs: map[digest.Digest]*job{}},
		fill: newFiller(ctx, opts.Upstream, log),
		log:  log,
	}
}

// Hydrations is the number of layer hydrations started so far.
func (sv *Server) Hydrations() int64 { return sv.hyd.started.Load() }

// Wait blocks until the hydrations running have finished (and their layers
// are kept, with KeepHydrated). Cancel New's ctx first to stop them early.
func (sv *Server) Wait() { sv.hyd.running.Wait() }

// ServeHTTP implements the pull side of the distribution API.
func (sv *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(w, r, errf(http.StatusMethodNotAllowed, codeUnsupported, "this registry is read-only (a blockfile site mirror)", map[string]string{"method": truncate(r.Method)}))
		return
	}
	rt, aerr := parsePath(r)
	if aerr != nil {
		writeError(w, r, aerr)
		return
	}
	// containerd names the registry a mirror request is for in ?ns=.
	ns := r.URL.Query().Get("ns")
	if ns != "" && (len(ns) > maxNameLen || !domainRe.MatchString(ns)) {
		writeError(w, r, errf(http.StatusBadRequest, codeNameInvalid, "invalid ns (registry host)", map[string]string{"ns": truncate(ns)}))
		return
	}
	var err error
	switch rt.kind {
	case "base":
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			io.WriteString(w, "{}")
		}
		return
	case "tags":
		err = sv.tags(w, r, ns, rt)
	case "manifests":
		err = sv.manifest(w, r, ns, rt)
	case "blobs":
		err = sv.blob(w, r, ns, rt)
	}
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			sv.log.Error("request failed", "method", r.Method, "path", truncate(r.URL.Path), "err", err)
			ae = errf(http.StatusInternalServerError, codeUnknown, err.Error(), nil)
		}
		writeError(w, r, ae)
	}
}

// images returns the repository's tags (and digest-pinned images) as the
// request may see them: those the store holds under the name, under
// "ns/name", and under "src/name" for each registry src the request may be
// filled from.
func (sv *Server) images(ctx context.Context, r *http.Request, ns, name string) (map[string]taggedImage, error) {
	tags, found, err := sv.cat.lookup(ctx, ns, name, sv.fill.sources(r, ns))
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, nameUnknown(name)
	}
	return tags, nil
}

func nameUnknown(name string) *apiError {
	return errf(http.StatusNotFound, codeNameUnknown, "repository name not known to registry", map[string]string{"name": name})
}

func (sv *Server) tags(w http.ResponseWriter, r *http.Request, ns string, rt route) error {
	images, err := sv.images(r.Context(), r, ns, rt.name)
	if err != nil {
		return err
	}
	list := make([]string, 0, len(images))
	for t := range images {
		if !isPinned(t) {
			list = append(list, t)
		}
	}
	sort.Strings(list)
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(list, last)
		if i < len(list) && list[i] == last {
			i++
		}
		list = list[i:]
	}
	if nv := q.Get("n"); nv != "" {
		n, err := strconv.Atoi(nv)
		if err != nil || n < 0 {
			return errf(http.StatusBadRequest, codePaginationNumber, "invalid number of results requested", map[string]string{"n": truncate(nv)})
		}
		if n < len(list) {
			list = list[:n]
			if n > 0 {
				next := url.Values{"n": {strconv.Itoa(n)}, "last": {list[n-1]}}
				w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, rt.name, next.Encode()))
			}
		}
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rt.name, list})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
}

// manifest serves a manifest or index by tag or digest. A tag serves the
// image index the store holds (the standard entries with their platforms
// and, as unknown/unknown entries clients skip, the blocked form), exactly
// what `blockfile push` puts under the tag, so a digest pinned from either
// matches. A client that does not accept indexes gets the standard manifest.
//
// With an upstream, a tag or digest the store lacks is filled first (the
// request waits for it), and a tag filled earlier is resolved upstream
// again once its TagTTL has passed.
func (sv *Server) manifest(w http.ResponseWriter, r *http.Request, ns string, rt route) error {
	ctx := r.Context()
	srcs := sv.fill.sources(r, ns)
	images, found, err := sv.cat.lookup(ctx, ns, rt.name, srcs)
	if err != nil {
		return err
	}
	if !found && len(srcs) == 0 {
		return nameUnknown(rt.name)
	}
	var desc ocispec.Descriptor
	if isDigest(rt.ref) {
		d, aerr := parseDigest(rt.ref)
		if aerr != nil {
			return aerr
		}
		unknown := errf(http.StatusNotFound, codeManifestUnknown, "manifest unknown", map[string]string{"name": rt.name, "digest": d.String()})
		var ok bool
		desc, _, ok, err = sv.find(ctx, images, d)
		if err != nil {
			return err
		}
		if !ok && len(srcs) > 0 {
			if err := sv.fill.fill(ctx, srcs, rt.name, d.String()); err != nil {
				return fillFailed(err, orNameUnknown(found, rt.name, unknown), rt.ref)
			}
			if images, _, err = sv.cat.lookup(ctx, ns, rt.name, srcs); err != nil {
				return err
			}
			if desc, _, ok, err = sv.find(ctx, images, d); err != nil {
				return err
			}
		}
		if !ok && !found {
			return nameUnknown(rt.name)
		}
		if !ok || !(transport.IsManifest(desc.MediaType) || transport.IsIndex(desc.MediaType)) {
			return unknown
		}
	} else {
		if !tagRe.MatchString(rt.ref) {
			return errf(http.StatusBadRequest, codeTagInvalid, "invalid tag", map[string]string{"tag": truncate(rt.ref)})
		}
		unknown := errf(http.StatusNotFound, codeManifestUnknown, "manifest unknown", map[string]string{"name": rt.name, "tag": rt.ref})
		ti, ok := images[rt.ref]
		if len(srcs) > 0 {
			refilled := false
			if !ok {
				if err := sv.fill.fill(ctx, srcs, rt.name, rt.ref); err != nil {
					return fillFailed(err, orNameUnknown(found, rt.name, unknown), rt.ref)
				}
				refilled = true
			} else if src, up := upstreamOf(ti, srcs, rt.name, rt.ref); up {
				sv.fill.refresh(ctx, ti, src, rt.name, rt.ref)
				refilled = true
			}
			if refilled {
				if images, found, err = sv.cat.lookup(ctx, ns, rt.name, srcs); err != nil {
					return err
				}
				ti, ok = images[rt.ref]
			}
		}
		if !ok && !found {
			return nameUnknown(rt.name)
		}
		if !ok {
			return unknown
		}
		desc = ti.desc
		if desc.MediaType == "" {
			desc.MediaType = ocispec.MediaTypeImageIndex
		}
		if std, ok := sv.standardFor(ctx, r, desc); ok {
			desc = std
		}
	}
	desc = plain(desc)
	f, err := sv.openBlob(desc)
	if errors.Is(err, store.ErrNotFound) {
		return errf(http.StatusNotFound, codeManifestUnknown, "manifest unknown", map[string]string{"name": rt.name, "digest": desc.Digest.String()})
	}
	if err != nil {
		return err
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", desc.MediaType)
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("Content-Length", strconv.FormatInt(desc.Size, 10))
	h.Set("ETag", `"`+desc.Digest.String()+`"`)
	if r.Method == http.MethodHead {
		return nil
	}
	sv.sendVerified(w, f, desc)
	return nil
}

// orNameUnknown is NAME_UNKNOWN when the store has no repository of the
// name either, else unknown.
func orNameUnknown(found bool, name string, unknown *apiError) *apiError {
	if !found {
		return nameUnknown(name)
	}
	return unknown
}

// standardFor returns the standard manifest to serve instead of the index
// idx when the request's Accept header lists manifest types but no index
// type (an old client); ok is false otherwise.
func (sv *Server) standardFor(ctx context.Context, r *http.Request, idx ocispec.Descriptor) (ocispec.Descriptor, bool) {
	accepts := map[string]bool{}
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil {
				accepts[mt] = true
			}
		}
	}
	if len(accepts) == 0 || accepts["*/*"] || accepts[idx.MediaType] {
		return ocispec.Descriptor{}, false
	}
	var index ocispec.Index
	if err := sv.s.GetJSON(ctx, plain(idx), &index); err != nil {
		return ocispec.Descriptor{}, false
	}
	std, ok, err := store.StandardOf(index.Annotations)
	if err != nil || !ok || !transport.IsManifest(std.MediaType) || !accepts[std.MediaType] {
		return ocispec.Descriptor{}, false
	}
	return std, true
}

// find looks d up in the graphs of the repository's images: its descriptor
// and, for a standard layer with blocks, how to hydrate it.
func (sv *Server) find(ctx context.Context, images map[string]taggedImage, d digest.Digest) (ocispec.Descriptor, *image.Layer, bool, error) {
	tags := make([]string, 0, len(images))
	for t := range images {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	var firstErr error
	for _, t := range tags {
		g, err := sv.cat.graphOf(ctx, images[t])
		if err != nil {
			// One broken image must not hide the others' blobs.
			sv.log.Error("read image", "name", images[t].name, "err", err)
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		desc, ok := g.blobs[d]
		if !ok {
			continue
		}
		if l, ok := g.layers[d]; ok {
			return desc, &l, true, nil
		}
		return desc, nil, true, nil
	}
	return ocispec.Descriptor{}, nil, false, firstErr
}

// blob serves a blob of the repository: from the store when it holds it,
// hydrated on demand when it is a standard layer the store holds only in
// blocked form.
func (sv *Server) blob(w http.ResponseWriter, r *http.Request, ns string, rt route) error {
	ctx := r.Context()
	images, err := sv.images(ctx, r, ns, rt.name)
	if err != nil {
		return err
	}
	d, aerr := parseDigest(rt.ref)
	if aerr != nil {
		return aerr
	}
	desc, l, ok, err := sv.find(ctx, images, d)
	if err != nil {
		return err
	}
	unknown := errf(http.StatusNotFound, codeBlobUnknown, "blob unknown to registry", map[string]string{"name": rt.name, "digest": d.String()})
	if !ok {
		return unknown
	}
	desc = plain(desc)
	f, err := sv.openBlob(desc)
	switch {
	case err == nil:
		defer f.Close()
		return sv.serveFile(w, r, f, desc)
	case !errors.Is(err, store.ErrNotFound):
		return err
	case l == nil:
		return unknown
	}
	if r.Method == http.MethodHead {
		// The layer's size and digest are known without hydrating it; a
		// client that goes on to GET it starts the hydration.
		blobHeaders(w, desc)
		w.Header().Set("Content-Length", strconv.FormatInt(desc.Size, 10))
		return nil
	}
	j, release, err := sv.hyd.acquire(ctx, *l)
	if err != nil {
		return err
	}
	if j == nil { // kept by a hydration that finished meanwhile
		f, err := sv.openBlob(desc)
		if err != nil {
			return err
		}
		defer f.Close()
		return sv.serveFile(w, r, f, desc)
	}
	defer release()
	return sv.serveJob(w, r, j, desc)
}

// openBlob opens the store's bytes of desc (whose digest is validated):
// its file, or the range of another blob's file where it lies (an
// extent), with the size checked. A blob the store lacks is
// store.ErrNotFound.
func (sv *Server) openBlob(desc ocispec.Descriptor) (*store.BlobFile, error) {
	return sv.s.OpenFile(desc)
}

func blobHeaders(w http.ResponseWriter, desc ocispec.Descriptor) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", `"`+desc.Digest.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000")
}

// serveFile serves a blob file: whole (verified while sent) or one range.
func (sv *Server) serveFile(w http.ResponseWriter, r *http.Request, f *store.BlobFile, desc ocispec.Descriptor) error {
	blobHeaders(w, desc)
	start, end, partial, aerr := parseRange(w, r, desc.Size)
	if aerr != nil {
		return aerr
	}
	if r.Method == http.MethodHead {
		return nil
	}
	if partial {
		// A range cannot be checked against the digest; the client checks
		// the blob it assembles. The file's size was checked.
		bp := bufs.Get().(*[]byte)
		defer bufs.Put(bp)
		if _, err := io.CopyBuffer(w, io.NewSectionReader(f.File, f.Offset+start, end-start), *bp); err != nil {
			sv.abort(desc, "send range", err)
		}
		return nil
	}
	sv.sendVerified(w, f, desc)
	return nil
}

// sendVerified streams f (desc.Size bytes, headers already set) to w,
// hashing as it goes, and sends the last byte only once the digest
// matched: a corrupt blob in the store never reaches a client whole. On a
// mismatch the connection is aborted, and the digest and file logged.
func (sv *Server) sendVerified(w http.ResponseWriter, bf *store.BlobFile, desc ocispec.Descriptor) {
	f := bf.Reader()
	if desc.Size == 0 {
		if desc.Digest != digest.SHA256.FromBytes(nil) && desc.Digest.Algorithm() == digest.SHA256 {
			sv.abort(desc, "verify", fmt.Errorf("empty file: %w", store.ErrDigestMismatch))
		}
		return
	}
	alg := desc.Digest.Algorithm()
	hh := alg.Hash()
	if alg == digest.SHA256 {
		hh = sha256.New()
	}
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	buf := *bp
	var held byte // the blob's last byte, sent once the digest matched
	for off := int64(0); off < desc.Size; {
		n := min(int64(len(buf)), desc.Size-off)
		k, err := f.ReadAt(buf[:n], off)
		if int64(k) != n {
			sv.abort(desc, "read "+bf.Path, fmt.Errorf("short read at %d: %w", off, err))
		}
		hh.Write(buf[:k])
		off += int64(k)
		out := buf[:k]
		if off == desc.Size {
			held, out = out[k-1], out[:k-1]
		}
		if _, err := w.Write(out); err != nil {
			return // the client went away
		}
	}
	if got := digest.NewDigest(alg, hh); got != desc.Digest {
		sv.abort(desc, "verify "+bf.Path, fmt.Errorf("content hashes to %s: %w", got, store.ErrDigestMismatch))
	}
	w.Write([]byte{held})
}

// serveJob serves a layer being hydrated, as it is produced.
func (sv *Server) serveJob(w http.ResponseWriter, r *http.Request, j *job, desc ocispec.Descriptor) error {
	ctx := r.Context()
	// Wait for the first bytes before answering, so a hydration that fails
	// at once (a missing member) gets an error status, not a broken body.
	if _, err := j.wait(ctx, 0); err != nil {
		if errors.Is(err, errHydrateFailed) {
			return errf(http.StatusInternalServerError, codeUnknown, "hydrating the layer failed (see the server log)", map[string]string{"digest": desc.Digest.String()})
		}
		return err
	}
	blobHeaders(w, desc)
	start, end, _, aerr := parseRange(w, r, desc.Size)
	if aerr != nil {
		return aerr
	}
	if r.Method == http.MethodHead {
		return nil
	}
	if err := j.copyRange(ctx, w, start, end); err != nil {
		if errors.Is(err, errSource) {
			// A file the layer is sent from is gone or changed since it was
			// hashed: the next request starts over (and fails, naming it,
			// if it is corrupt).
			sv.hyd.remove(j)
		}
		if ctx.Err() == nil {
			sv.abort(desc, "hydrate", err)
		}
	}
	return nil
}

// abort ends a response whose headers are sent: the connection is cut, so
// the client sees a short body (and its digest check fails) rather than a
// complete wrong one.
func (sv *Server) abort(desc ocispec.Descriptor, what string, err error) {
	sv.log.Error("blob aborted", "digest", desc.Digest, "op", what, "err", err)
	panic(http.ErrAbortHandler)
}

// parseRange reads a single-range Range header ("bytes=a-b", "bytes=a-",
// "bytes=-n"), sets the status and length headers, and returns the byte
// span to send. Multiple or malformed ranges are ignored (RFC 9110: the
// whole blob is sent); an unsatisfiable one is a 416.
func parseRange(w http.ResponseWriter, r *http.Request, size int64) (start, end int64, partial bool, _ *apiError) {
	h := w.Header()
	full := func() (int64, int64, bool, *apiError) {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return full()
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return full()
	}
	switch {
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return full()
		}
		if n == 0 {
			return unsatisfiable(h, size)
		}
		start, end = max(size-n, 0), size
	default:
		s, err := strconv.ParseInt(a, 10, 64)
		if err != nil || s < 0 {
			return full()
		}
		e := size - 1
		if b != "" {
			if e, err = strconv.ParseInt(b, 10, 64); err != nil || e < s {
				return full()
			}
		}
		if s >= size {
			return unsatisfiable(h, size)
		}
		start, end = s, min(e, size-1)+1
	}
	if start == 0 && end == size {
		return full()
	}
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	w.WriteHeader(http.StatusPartialContent)
	return start, end, true, nil
}

func unsatisfiable(h http.Header, size int64) (int64, int64, bool, *apiError) {
	h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
	return 0, 0, false, errf(http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid, "requested range not satisfiable", nil)
}
