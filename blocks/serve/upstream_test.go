package serve

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// upstreamRegistry is a registry (go-containerregistry's, in memory) that
// counts the requests it answers; it returns its host:port.
func upstreamRegistry(t testing.TB) (string, *sync.Map) {
	host, reqs, _ := upstreamRegistryServer(t)
	return host, reqs
}

func upstreamRegistryServer(t testing.TB) (string, *sync.Map, *httptest.Server) {
	t.Helper()
	reqs := &sync.Map{} // "METHOD path" -> *int; a GET with a Range header counts as "RANGE path"
	h := ggcrregistry.New()
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method := r.Method
		if method == http.MethodGet && r.Header.Get("Range") != "" {
			method = "RANGE"
		}
		mu.Lock()
		n, _ := reqs.LoadOrStore(method+" "+r.URL.Path, new(int))
		*n.(*int)++
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), reqs, srv
}

// pushImage pushes the store's image name to ref with blockfile push.
func pushImage(t testing.TB, s *store.Store, imageName, ref string) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Push(context.Background(), s, imageName, r, registry.PushOptions{}); err != nil {
		t.Fatal(err)
	}
}

// upstreamServer serves an empty store filled from regs.
func upstreamServer(t testing.TB, regs []string, ttl0 bool) (*store.Store, string, *logBuffer) {
	t.Helper()
	site := openStore(t)
	uo := UpstreamOptions{Registries: regs, Upstream: NewRegistryUpstream(site, transport.Registry{}, 0)}
	if !ttl0 {
		uo.TagTTL = DefaultFillTimeout // never within a test
	}
	_, addr, logs := startServer(t, site, Options{Upstream: uo})
	return site, addr, logs
}

// TestUpstreamFillsBlockedForm: a tag the store lacks is filled from the
// upstream's blocked form (no standard layer with blocks crosses), then
// served exactly; concurrent first requests share one fill.
func TestUpstreamFillsBlockedForm(t *testing.T) {
	src := openStore(t)
	img := exportImage(t, src, "team/app:v1", 31)
	up, reqs := upstreamRegistry(t)
	pushImage(t, src, img.name, up+"/team/app:v1")
	reqs.Clear()
	site, addr, logs := upstreamServer(t, []string{up}, false)

	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			md, layers := pullAll(t, addr, "team/app", "v1")
			if md.String() != img.standard.Digest.String() {
				t.Errorf("pulled manifest %s, want %s", md, img.standard.Digest)
			}
			for i, l := range layers {
				if l.String() != img.manifest.Layers[i].Digest.String() {
					t.Errorf("layer %d: %s, want %s", i, l, img.manifest.Layers[i].Digest)
				}
			}
		}()
	}
	wg.Wait()
	if n := logs.count("msg=\"filled from upstream\""); n != 1 {
		t.Errorf("%d fills logged, want 1:\n%s", n, logs)
	}
	// Only what the site lacks crossed: no standard layer with blocks was
	// downloaded whole (the missing members were read as byte ranges of
	// it, the registry pull's path with a connection), and the site keeps
	// none.
	ranged := 0
	for _, d := range img.blocked {
		if v, ok := reqs.Load("GET /v2/team/app/blobs/" + d.String()); ok {
			t.Errorf("standard layer %s downloaded whole from upstream %d times", d, *v.(*int))
		}
		if v, ok := reqs.Load("RANGE /v2/team/app/blobs/" + d.String()); ok {
			ranged += *v.(*int)
		}
		if _, err := os.Stat(site.BlobPath(d)); err == nil {
			t.Errorf("site store holds the standard layer %s", d)
		}
	}
	if ranged == 0 {
		t.Errorf("no Range GET of a standard layer: the fill did not read missing members as ranges")
	}
	tags, err := site.Tags(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := tags[up+"/team/app:v1"]; !ok || d.Digest != img.index.Digest {
		t.Errorf("site tags %v, want %s/team/app:v1 at %s", tags, up, img.index.Digest)
	}
	// By digest too (a client that resolved elsewhere), without a new fill.
	if r := get(t, addr, "/v2/team/app/manifests/"+img.index.Digest.String(), nil); r.status != 200 || r.dcd != img.index.Digest.String() {
		t.Errorf("manifest by digest: %d %s", r.status, r.body)
	}
	if n := logs.count("msg=\"filled from upstream\""); n != 1 {
		t.Errorf("%d fills logged after a digest request, want 1", n)
	}
}

// TestUpstreamPlainImageKeepsDigests: an image without a blocked form is
// copied as it is, so serve answers with the registry's digests.
func TestUpstreamPlainImageKeepsDigests(t *testing.T) {
	up, _ := upstreamRegistry(t)
	img, err := random.Image(300<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(up+"/plain/img:1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	wantLayers, _ := img.Layers()
	_, addr, _ := upstreamServer(t, []string{up}, false)
	r := get(t, addr, "/v2/plain/img/manifests/1", nil)
	if r.status != 200 || r.dcd != want.String() {
		t.Fatalf("manifest: %d %s (digest %s), want %s", r.status, r.body, r.dcd, want)
	}
	sref, _ := name.ParseReference(addr+"/plain/img:1", name.Insecure)
	got, err := remote.Image(sref)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := got.Layers()
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, rc) // go-containerregistry verifies at EOF
		rc.Close()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		d, _ := l.Digest()
		wd, _ := wantLayers[i].Digest()
		if d != wd {
			t.Errorf("layer %d: %s, want %s", i, d, wd)
		}
	}
}

// TestUpstreamTagMoves: with TagTTL 0 a tag filled upstream is resolved on
// each request, so a new push to it is served at once.
func TestUpstreamTagMoves(t *testing.T) {
	src := openStore(t)
	a := exportImage(t, src, "team/app:a", 41)
	b := exportImage(t, src, "team/app:b", 42)
	up, _ := upstreamRegistry(t)
	pushImage(t, src, a.name, up+"/team/app:latest")
	_, addr, logs := upstreamServer(t, []string{up}, true)
	if md, _ := pullAll(t, addr, "team/app", "latest"); md.String() != a.standard.Digest.String() {
		t.Fatalf("first pull: %s, want %s", md, a.standard.Digest)
	}
	pushImage(t, src, b.name, up+"/team/app:latest")
	if md, _ := pullAll(t, addr, "team/app", "latest"); md.String() != b.standard.Digest.String() {
		t.Fatalf("after the push: %s, want the new image %s\n%s", md, b.standard.Digest, logs)
	}
	if !strings.Contains(logs.String(), "msg=\"tag moved upstream\"") {
		t.Errorf("no 'tag moved upstream' in the log:\n%s", logs)
	}
}

// TestUpstreamDownServesStored: when the registry cannot be reached, a tag
// filled earlier is served from the store (logged), not failed.
func TestUpstreamDownServesStored(t *testing.T) {
	src := openStore(t)
	a := exportImage(t, src, "team/app:a", 43)
	up, _, srv := upstreamRegistryServer(t)
	pushImage(t, src, a.name, up+"/team/app:latest")
	_, addr, logs := upstreamServer(t, []string{up}, true)
	if md, _ := pullAll(t, addr, "team/app", "latest"); md.String() != a.standard.Digest.String() {
		t.Fatalf("first pull: %s, want %s", md, a.standard.Digest)
	}
	srv.Close()
	if md, _ := pullAll(t, addr, "team/app", "latest"); md.String() != a.standard.Digest.String() {
		t.Fatalf("with the registry down: %s, want the stored %s", md, a.standard.Digest)
	}
	if !strings.Contains(logs.String(), "upstream resolve failed; serving the stored image") {
		t.Errorf("the failed check is not logged:\n%s", logs)
	}
}

// TestUpstreamErrors: an unknown name upstream is the spec's 404; an
// unreachable upstream a 502; serve's own fill coming back is not filled
// (a loop).
func TestUpstreamErrors(t *testing.T) {
	up, _ := upstreamRegistry(t)
	_, addr, logs := upstreamServer(t, []string{up}, false)
	if r := get(t, addr, "/v2/no/such/manifests/v1", nil); r.status != 404 || !strings.Contains(string(r.body), "NAME_UNKNOWN") {
		t.Errorf("unknown upstream: %d %s", r.status, r.body)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a name unknown upstream is logged as an error:\n%s", logs)
	}

	// 127.0.0.1:1 refuses connections.
	_, addr2, logs2 := upstreamServer(t, []string{"127.0.0.1:1"}, false)
	r := get(t, addr2, "/v2/team/app/manifests/v1", nil)
	if r.status != http.StatusBadGateway || !strings.Contains(string(r.body), "UNKNOWN") {
		t.Errorf("unreachable upstream: %d %s", r.status, r.body)
	}
	if n := logs2.count("msg=\"upstream fill failed\" ref=127.0.0.1:1/team/app:v1"); n != 1 {
		t.Errorf("%d failure lines naming the ref, want 1:\n%s", n, logs2)
	}

	site := openStore(t)
	u := NewRegistryUpstream(site, transport.Registry{}, 0)
	_, addr3, logs3 := startServer(t, site, Options{Upstream: UpstreamOptions{Registries: []string{up}, Upstream: u}})
	r = get(t, addr3, "/v2/team/app/manifests/v1", map[string]string{"User-Agent": u.ua + " go-containerregistry"})
	if r.status != 404 || strings.Contains(logs3.String(), "upstream") {
		t.Errorf("own fill request: %d %s; log:\n%s", r.status, r.body, logs3)
	}
}

// TestUpstreamSources: which registries a request may be filled from.
func TestUpstreamSources(t *testing.T) {
	req := httptest.NewRequest("GET", "/v2/x/manifests/y", nil)
	f := newFiller(context.Background(), UpstreamOptions{Upstream: NewRegistryUpstream(nil, transport.Registry{}, 0), Registries: []string{"a.example", "index.docker.io"}}, nil)
	any := newFiller(context.Background(), UpstreamOptions{Upstream: NewRegistryUpstream(nil, transport.Registry{}, 0), AnyNamespace: true}, nil)
	for _, c := range []struct {
		f    *filler
		ns   string
		want []string
	}{
		{f, "", []string{"a.example", "docker.io"}},
		{f, "a.example", []string{"a.example"}},
		{f, "registry-1.docker.io", []string{"docker.io"}},
		{f, "b.example", []string{"a.example", "docker.io"}}, // a mirror with fixed upstreams
		{any, "b.example:5000", []string{"b.example:5000"}},
		{any, "", nil},
		{any, "127.0.0.1:5000", nil},
		{any, "localhost", nil},
		{any, "169.254.169.254", nil},
		{any, "[::1]:5000", nil},
		{nil, "a.example", nil},
	} {
		if got := c.f.sources(req, c.ns); !slices.Equal(got, c.want) {
			t.Errorf("ns %q: %v, want %v", c.ns, got, c.want)
		}
	}
	if newFiller(context.Background(), UpstreamOptions{Registries: []string{"a"}}, nil) != nil {
		t.Error("a filler without an Upstream")
	}
}
