package serve

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestErrorCodes: hostile and unknown requests get the distribution
// spec's status and error code, and never reach a file outside the store.
func TestErrorCodes(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", 10)
	other := exportImage(t, s, "other/repo:v1", 11)
	_, addr, _ := startServer(t, s, Options{})
	zeros := "sha256:" + strings.Repeat("0", 64)
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/nope/manifests/v1", 404, codeNameUnknown},
		{"GET", "/v2/nope/blobs/" + zeros, 404, codeNameUnknown},
		{"GET", "/v2/nope/tags/list", 404, codeNameUnknown},
		{"GET", "/v2/team/app/manifests/v9", 404, codeManifestUnknown},
		{"GET", "/v2/team/app/manifests/" + zeros, 404, codeManifestUnknown},
		{"GET", "/v2/team/app/manifests/" + img.manifest.Config.Digest.String(), 404, codeManifestUnknown}, // a blob, not a manifest
		{"GET", "/v2/team/app/manifests/" + other.standard.Digest.String(), 404, codeManifestUnknown},      // another repository's
		{"GET", "/v2/team/app/manifests/sha256:abc", 400, codeDigestInvalid},
		{"GET", "/v2/team/app/manifests/-v2", 400, codeTagInvalid},
		{"GET", "/v2/team/app/blobs/" + zeros, 404, codeBlobUnknown},
		{"GET", "/v2/team/app/blobs/" + other.manifest.Layers[0].Digest.String(), 404, codeBlobUnknown}, // in the store, not in this repository
		{"GET", "/v2/team/app/blobs/sha512:" + strings.Repeat("0", 128), 404, codeBlobUnknown},
		{"GET", "/v2/team/app/blobs/sha256:xyz", 400, codeDigestInvalid},
		{"GET", "/v2/team/app/blobs/sha256:" + strings.Repeat("0", 63), 400, codeDigestInvalid},
		{"GET", "/v2/team/app/blobs/sha256:" + strings.Repeat("a", 10000), 400, codeDigestInvalid},
		{"GET", "/v2/team/app/blobs/md5:" + strings.Repeat("0", 32), 400, codeDigestInvalid},
		{"GET", "/v2/team/app/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd", 400, codeNameInvalid},
		{"GET", "/v2/team/app/blobs/..", 400, codeDigestInvalid},
		{"GET", "/v2/team/../app/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/../../../etc/passwd", 404, codeUnsupported},
		{"GET", "/v2/team%2fapp/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/team%2Fapp/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/team/app%00/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/Team/App/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/team//app/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/" + strings.Repeat("a", 300) + "/manifests/v2", 400, codeNameInvalid},
		{"GET", "/v2/team/app/manifests/v2?ns=bad/host", 400, codeNameInvalid},
		{"GET", "/v2/team/app/tags/list?n=abc", 400, codePaginationNumber},
		{"GET", "/v2/team/app/tags/list?n=-1", 400, codePaginationNumber},
		{"GET", "/v2/team/app/foo/bar", 404, codeUnsupported},
		{"GET", "/v3/", 404, codeUnsupported},
		{"PUT", "/v2/team/app/manifests/v2", 405, codeUnsupported},
		{"DELETE", "/v2/team/app/manifests/v2", 405, codeUnsupported},
		{"DELETE", "/v2/team/app/blobs/" + img.manifest.Config.Digest.String(), 405, codeUnsupported},
		{"POST", "/v2/team/app/blobs/uploads/", 405, codeUnsupported},
		{"PATCH", "/v2/team/app/blobs/uploads/abc", 405, codeUnsupported},
		{"GET", "/v2/team/app/blobs/uploads/abc", 405, codeUnsupported},
	} {
		r := do(t, c.method, addr, c.path, nil)
		var body struct {
			Errors []struct {
				Code, Message string
			}
		}
		if err := json.Unmarshal(r.body, &body); err != nil || len(body.Errors) != 1 {
			t.Errorf("%s %s: %d, body %q is not the spec's error JSON", c.method, c.path[:min(len(c.path), 80)], r.status, r.body)
			continue
		}
		if r.status != c.status || body.Errors[0].Code != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path[:min(len(c.path), 80)], r.status, body.Errors[0].Code, c.status, c.code)
		}
		if r.ctype != "application/json; charset=utf-8" {
			t.Errorf("%s %s: Content-Type %q", c.method, c.path[:min(len(c.path), 80)], r.ctype)
		}
	}
	// HEAD gets the status, no body.
	if r := do(t, "HEAD", addr, "/v2/nope/manifests/v1", nil); r.status != 404 || len(r.body) != 0 {
		t.Errorf("HEAD unknown: %d, %d bytes", r.status, len(r.body))
	}
	if r := get(t, addr, "/v2/", nil); r.status != http.StatusOK || string(r.body) != "{}" || r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("GET /v2/: %d %q", r.status, r.body)
	}
}

func TestTagsPagination(t *testing.T) {
	s := openStore(t)
	img := exportImage(t, s, "team/app:b", 12)
	for _, n := range []string{"team/app:a", "team/app:c", "team/app:d"} {
		if err := s.Tag(t.Context(), n, img.index); err != nil {
			t.Fatal(err)
		}
	}
	_, addr, _ := startServer(t, s, Options{})
	r := get(t, addr, "/v2/team/app/tags/list?n=2", nil)
	if string(r.body) != `{"name":"team/app","tags":["a","b"]}` || r.header.Get("Link") != `</v2/team/app/tags/list?last=b&n=2>; rel="next"` {
		t.Errorf("n=2: %s Link %q", r.body, r.header.Get("Link"))
	}
	r = get(t, addr, "/v2/team/app/tags/list?n=2&last=b", nil)
	if string(r.body) != `{"name":"team/app","tags":["c","d"]}` {
		t.Errorf("n=2&last=b: %s", r.body)
	}
}

// TestNamespaces: containerd's ?ns= finds images stored under the
// registry's name; Docker Hub official images match their short name.
func TestNamespaces(t *testing.T) {
	s := openStore(t)
	a := exportImage(t, s, "registry.example:5000/team/app:v2", 13)
	b := exportImage(t, s, "busybox:1", 14)
	_, addr, _ := startServer(t, s, Options{})
	if r := get(t, addr, "/v2/team/app/manifests/v2?ns=registry.example:5000", nil); r.dcd != a.index.Digest.String() {
		t.Errorf("ns=registry.example:5000: %d %s", r.status, r.body)
	}
	if r := get(t, addr, "/v2/team/app/manifests/v2", nil); r.status != 404 {
		t.Errorf("without ns: %d, want 404", r.status)
	}
	if r := get(t, addr, "/v2/library/busybox/manifests/1?ns=docker.io", nil); r.dcd != b.index.Digest.String() {
		t.Errorf("docker.io library/busybox: %d %s", r.status, r.body)
	}
	if r := get(t, addr, "/v2/busybox/manifests/1", nil); r.dcd != b.index.Digest.String() {
		t.Errorf("busybox: %d %s", r.status, r.body)
	}
}

func FuzzParsePath(f *testing.F) {
	for _, p := range []string{"/v2/", "/v2/a/b/manifests/v1", "/v2/a/blobs/sha256:00", "/v2/a/tags/list", "/v2/../x", "/v2/a%2fb/manifests/x", "/v2/a/blobs/uploads/x"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		req, err := http.NewRequest("GET", "http://h", nil)
		if err != nil {
			return
		}
		req.URL.Path = p
		rt, aerr := parsePath(req)
		if aerr != nil {
			if aerr.Status < 400 || aerr.Code == "" {
				t.Fatalf("%q: bad error %+v", p, aerr)
			}
			return
		}
		if rt.kind == "base" {
			return
		}
		if !nameRe.MatchString(rt.name) || strings.Contains(rt.name, "..") || strings.HasPrefix(rt.name, "/") || len(rt.name) > maxNameLen {
			t.Fatalf("%q: accepted name %q", p, rt.name)
		}
		if strings.Contains(rt.ref, "/") {
			t.Fatalf("%q: reference %q has a slash", p, rt.ref)
		}
	})
}
