package serve

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
)

// pullAll pulls addr/repo:tag for linux/amd64 with go-containerregistry
// (a client that checks every digest) and returns the manifest digest and
// the layer digests it read.
func pullAll(t testing.TB, addr, repo, tag string) (v1.Hash, []v1.Hash) {
	t.Helper()
	ref, err := name.ParseReference(addr+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatal(err)
	}
	md, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var got []v1.Hash
	for _, l := range layers {
		rc, err := l.Compressed() // verifies size and digest at EOF
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer: %v", err)
		}
		rc.Close()
		d, _ := l.Digest()
		got = append(got, d)
	}
	return md, got
}

func TestPullHydratesBlockedOnlyStore(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			s := openStore(t)
			img := exportImage(t, s, "team/app:v2", 1)
			dropStandard(t, s, img)
			sv, addr, logs := startServer(t, s, Options{KeepHydrated: keep})

			md, layers := pullAll(t, addr, "team/app", "v2")
			if md.String() != img.standard.Digest.String() {
				t.Errorf("pulled manifest %s, want the standard manifest %s", md, img.standard.Digest)
			}
			if len(layers) != len(img.manifest.Layers) {
				t.Fatalf("pulled %d layers, want %d", len(layers), len(img.manifest.Layers))
			}
			for i, l := range layers {
				if l.String() != img.manifest.Layers[i].Digest.String() {
					t.Errorf("layer %d: %s, want %s", i, l, img.manifest.Layers[i].Digest)
				}
			}
			if n := sv.Hydrations(); n != int64(len(img.blocked)) {
				t.Errorf("%d hydrations, want %d (one per layer with blocks)", n, len(img.blocked))
			}
			if c := logs.count("msg=hydrated"); c != len(img.blocked) {
				t.Errorf("log has %d 'hydrated' lines, want %d", c, len(img.blocked))
			}
			// The tag serves the index the store holds.
			resp := get(t, addr, "/v2/team/app/manifests/v2", nil)
			if resp.dcd != img.index.Digest.String() || resp.ctype != ocispec.MediaTypeImageIndex {
				t.Errorf("tag serves %s (%s), want the stored index %s", resp.dcd, resp.ctype, img.index.Digest)
			}
			sv.Wait()
			for _, d := range img.blocked {
				kept, err := s.Exists(context.Background(), d)
				if err != nil {
					t.Fatal(err)
				}
				if kept != keep {
					t.Errorf("layer %s in the store after the pull: %v, want %v", d, kept, keep)
				}
			}
			if err := s.Verify(context.Background(), func(p store.Problem) { t.Errorf("verify: %s", p) }); err != nil {
				t.Error(err)
			}
		})
	}
}

type response struct {
	status int
	body   []byte
	dcd    string
	ctype  string
	header http.Header
}

func do(t testing.TB, method, addr, path string, hdr map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Keep the path exactly as written (encoded slashes, dots).
	req.URL.Opaque = "//" + addr + path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		req.URL.Opaque = "//" + addr + path[:i]
		req.URL.RawQuery = path[i+1:]
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return response{status: resp.StatusCode, body: body, dcd: resp.Header.Get("Docker-Content-Digest"), ctype: resp.Header.Get("Content-Type"), header: resp.Header}
}

func get(t testing.TB, addr, path string, hdr map[string]string) response {
	return do(t, http.MethodGet, addr, path, hdr)
}

func TestConcurrentRequestsHydrateOnce(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 2)
	dropStandard(t, s, img)
	sv, addr, _ := startServer(t, s, Options{})
	d := img.blocked[0]
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + addr + "/v2/team/app/blobs/" + d.String())
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if err != nil {
				errs <- err
				return
			}
			if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.String() || resp.ContentLength != n {
				errs <- fmt.Errorf("got %s (%d bytes, Content-Length %d), want %s", got, n, resp.ContentLength, d)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := sv.Hydrations(); n != 1 {
		t.Errorf("%d hydrations of one layer for 20 concurrent requests, want 1", n)
	}
}

func TestRange(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 3)
	// One layer hydrated, one served from the store.
	dropStandard(t, s, img)
	_, addr, _ := startServer(t, s, Options{})
	for _, l := range img.manifest.Layers {
		full := get(t, addr, "/v2/team/app/blobs/"+l.Digest.String(), nil)
		if full.status != http.StatusOK || digest.FromBytes(full.body) != l.Digest {
			t.Fatalf("GET %s: %d, %d bytes", l.Digest, full.status, len(full.body))
		}
		size := int64(len(full.body))
		for _, c := range []struct {
			rng        string
			start, end int64 // want [start, end)
			status     int
		}{
			{"bytes=0-99", 0, 100, http.StatusPartialContent},
			{fmt.Sprintf("bytes=%d-", size-10), size - 10, size, http.StatusPartialContent},
			{"bytes=-7", size - 7, size, http.StatusPartialContent},
			{fmt.Sprintf("bytes=10-%d", size+100), 10, size, http.StatusPartialContent},
			{"bytes=0-", 0, size, http.StatusOK},
			{"bytes=0-1,5-6", 0, size, http.StatusOK}, // several ranges: the whole blob
			{"pages=1-2", 0, size, http.StatusOK},
		} {
			r := get(t, addr, "/v2/team/app/blobs/"+l.Digest.String(), map[string]string{"Range": c.rng})
			if r.status != c.status || string(r.body) != string(full.body[c.start:c.end]) {
				t.Errorf("%s Range %s: status %d, %d bytes; want %d, [%d,%d)", l.Digest, c.rng, r.status, len(r.body), c.status, c.start, c.end)
			}
		}
		r := get(t, addr, "/v2/team/app/blobs/"+l.Digest.String(), map[string]string{"Range": fmt.Sprintf("bytes=%d-", size)})
		if r.status != http.StatusRequestedRangeNotSatisfiable || r.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", size) {
			t.Errorf("Range past the end: %d %q", r.status, r.header.Get("Content-Range"))
		}
	}
}

func TestHEAD(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 4)
	dropStandard(t, s, img)
	sv, addr, _ := startServer(t, s, Options{})
	for _, c := range []struct {
		path, dcd, ctype string
		size             int64
	}{
		{"/v2/team/app/manifests/v2", img.index.Digest.String(), ocispec.MediaTypeImageIndex, img.index.Size},
		{"/v2/team/app/manifests/" + img.standard.Digest.String(), img.standard.Digest.String(), ocispec.MediaTypeImageManifest, img.standard.Size},
		{"/v2/team/app/blobs/" + img.manifest.Config.Digest.String(), img.manifest.Config.Digest.String(), "application/octet-stream", img.manifest.Config.Size},
		{"/v2/team/app/blobs/" + img.manifest.Layers[0].Digest.String(), img.manifest.Layers[0].Digest.String(), "application/octet-stream", img.manifest.Layers[0].Size},
	} {
		r := do(t, http.MethodHead, addr, c.path, nil)
		if r.status != http.StatusOK || r.dcd != c.dcd || r.ctype != c.ctype || r.header.Get("Content-Length") != fmt.Sprint(c.size) || len(r.body) != 0 {
			t.Errorf("HEAD %s: %d %s %s length %s, want 200 %s %s %d", c.path, r.status, r.dcd, r.ctype, r.header.Get("Content-Length"), c.dcd, c.ctype, c.size)
		}
	}
	// HEAD of a hydratable layer answers from its descriptor.
	if n := sv.Hydrations(); n != 0 {
		t.Errorf("HEAD requests started %d hydrations, want 0", n)
	}
}

func TestAcceptWithoutIndexGetsStandardManifest(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 5)
	_, addr, _ := startServer(t, s, Options{})
	r := get(t, addr, "/v2/team/app/manifests/v2", map[string]string{"Accept": ocispec.MediaTypeImageManifest + ", application/vnd.docker.distribution.manifest.v2+json"})
	if r.dcd != img.standard.Digest.String() || r.ctype != ocispec.MediaTypeImageManifest || digest.FromBytes(r.body) != img.standard.Digest {
		t.Errorf("Accept without index types: got %s (%s)", r.dcd, r.ctype)
	}
	r = get(t, addr, "/v2/team/app/manifests/v2", map[string]string{"Accept": ocispec.MediaTypeImageIndex + "," + ocispec.MediaTypeImageManifest})
	if r.dcd != img.index.Digest.String() {
		t.Errorf("Accept with the index type: got %s", r.dcd)
	}
}

func TestImagesAddedWhileRunningAreServed(t *testing.T) {
	s := openStore(t)
	img1 := exportImage(t, s, "team/app:v1", 6)
	_, addr, _ := startServer(t, s, Options{})
	if r := get(t, addr, "/v2/team/app/manifests/v1", nil); r.dcd != img1.index.Digest.String() {
		t.Fatalf("v1: %d %s", r.status, r.body)
	}
	if r := get(t, addr, "/v2/team/app/manifests/v2", nil); r.status != http.StatusNotFound {
		t.Fatalf("v2 before export: %d", r.status)
	}
	img2 := exportImage(t, s, "team/app:v2", 7)
	dropStandard(t, s, img2)
	md, _ := pullAll(t, addr, "team/app", "v2")
	if md.String() != img2.standard.Digest.String() {
		t.Errorf("v2 after export: %s, want %s", md, img2.standard.Digest)
	}
	// Retag v1 to v2's index: the tag follows at once.
	if err := s.Tag(context.Background(), "team/app:v1", img2.index); err != nil {
		t.Fatal(err)
	}
	if r := get(t, addr, "/v2/team/app/manifests/v1", nil); r.dcd != img2.index.Digest.String() {
		t.Errorf("v1 after retag: %s, want %s", r.dcd, img2.index.Digest)
	}
	var tl struct {
		Name string
		Tags []string
	}
	r := get(t, addr, "/v2/team/app/tags/list", nil)
	if err := json.Unmarshal(r.body, &tl); err != nil || tl.Name != "team/app" || strings.Join(tl.Tags, ",") != "v1,v2" {
		t.Errorf("tags/list: %d %s", r.status, r.body)
	}
}

func TestCorruptionIsNeverServedWhole(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 8)
	dropStandard(t, s, img)
	_, addr, logs := startServer(t, s, Options{})
	ctx := context.Background()
	resolved, err := imageResolve(ctx, s, img.name)
	if err != nil {
		t.Fatal(err)
	}
	// A corrupt member: the hydrated layer does not match its digest.
	var member ocispec.Descriptor
	for _, l := range resolved.Manifests[0].Layers {
		if l.HasBlocks() {
			member = l.Members[len(l.Members)-1]
		}
	}
	corrupt(t, s, member.Digest)
	// A corrupt stored blob (the layer without blocks).
	var plainLayer ocispec.Descriptor
	for _, l := range resolved.Manifests[0].Layers {
		if !l.HasBlocks() {
			plainLayer = l.Standard
		}
	}
	corrupt(t, s, plainLayer.Digest)
	for _, d := range []digest.Digest{img.blocked[0], plainLayer.Digest} {
		resp, err := http.Get("http://" + addr + "/v2/team/app/blobs/" + d.String())
		if err != nil {
			continue // refused before a body: fine
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && rerr == nil {
			t.Errorf("%s: a corrupt blob was served whole (%d bytes, hashes to %s)", d, len(body), digest.FromBytes(body))
		}
		if resp.StatusCode == http.StatusOK && digest.FromBytes(body) == d {
			t.Errorf("%s: served body hashes right despite the corruption?", d)
		}
	}
	if !strings.Contains(logs.String(), plainLayer.Digest.String()) || !strings.Contains(logs.String(), img.blocked[0].String()) {
		t.Errorf("log does not name the corrupt digests:\n%s", logs.String())
	}
	// Nothing was kept.
	if ok, _ := s.Exists(ctx, img.blocked[0]); ok {
		t.Error("a layer that failed to hydrate is in the store")
	}
}

// corrupt flips a byte in the middle of the blob d (same size).
func corrupt(t testing.TB, s *store.Store, d digest.Digest) {
	t.Helper()
	p := s.BlobPath(d)
	os.Chmod(p, 0o644)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	b := make([]byte, 1)
	off := fi.Size() / 2
	f.ReadAt(b, off)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptBlockedLayerIsNamed: a blocked layer corrupted in the store
// fails the hydrate, and the log names the blocked layer.
func TestCorruptBlockedLayerIsNamed(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 9)
	dropStandard(t, s, img)
	resolved, err := imageResolve(context.Background(), s, img.name)
	if err != nil {
		t.Fatal(err)
	}
	var blocked digest.Digest
	for _, l := range resolved.Manifests[0].Layers {
		if l.HasBlocks() {
			blocked = l.Blocked.Digest
		}
	}
	corrupt(t, s, blocked)
	_, addr, logs := startServer(t, s, Options{})
	resp, err := http.Get("http://" + addr + "/v2/team/app/blobs/" + img.blocked[0].String())
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && rerr == nil {
			t.Errorf("a layer hydrated from a corrupt blocked layer was served whole (%d bytes)", len(body))
		}
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "hydrate failed") })
	if l := logs.String(); !strings.Contains(l, "blocked layer "+blocked.String()) || !strings.Contains(l, "digest mismatch") {
		t.Errorf("log does not name the corrupt blocked layer %s:\n%s", blocked, l)
	}
}
