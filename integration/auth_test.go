package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockfile/blockfile/integration/harness"
)

// writeDockerConfig writes a docker config.json granting user:pass on host.
func writeDockerConfig(t *testing.T, path, host, user, pass string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	putFile(t, path, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)))
}

// bfEnv runs the blockfile CLI with extra environment variables.
func bfEnv(t *testing.T, env []string, bin string, args ...string) bfResult {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("blockfile %s: %v", strings.Join(args, " "), err)
	}
	return bfResult{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
}

// checkAuthFailure asserts r failed with exit 1 and one line of error that
// names the registry and what to do, and no HTTP exchange.
func checkAuthFailure(t *testing.T, what string, r bfResult, host string) {
	t.Helper()
	msg := strings.TrimSpace(r.stderr)
	if r.code != 1 {
		t.Fatalf("%s: exit %d, want 1\nstderr:\n%s", what, r.code, r.stderr)
	}
	if strings.Count(msg, "\n") != 0 {
		t.Errorf("%s: want one line of error, got:\n%s", what, msg)
	}
	for _, w := range []string{host, "--authfile", "docker login"} {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: error lacks %q:\n%s", what, w, msg)
		}
	}
	for _, bad := range []string{"GET ", "HEAD ", "POST ", "UNAUTHORIZED", "/v2/"} {
		if strings.Contains(msg, bad) {
			t.Errorf("%s: error shows the HTTP exchange (%q):\n%s", what, bad, msg)
		}
	}
}

// TestRegistryBasicAuth: a distribution registry with htpasswd (bcrypt)
// basic auth. Without credentials export and bundle apply --output fail
// with one clear message; with a docker config file given by --authfile,
// $REGISTRY_AUTH_FILE or $DOCKER_CONFIG they work, and the image read back
// has the standard digest.
func TestRegistryBasicAuth(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	fx := smallFixture(t)
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	out, err := exec.Command("htpasswd", "-Bbn", "alice", "s3cret").Output()
	if err != nil {
		t.Fatalf("htpasswd (apt-get install apache2-utils): %v", err)
	}
	putFile(t, htpasswd, out)
	reg := env.RegistryWith(t, harness.RegistryOptions{Name: "auth-basic", Htpasswd: htpasswd})
	t.Cleanup(func() { reg.Stop() })
	host := reg.Addr
	ref := "docker://" + host + "/team/app:v1"

	authfile := filepath.Join(dir, "auth.json")
	writeDockerConfig(t, authfile, host, "alice", "s3cret")
	wrong := filepath.Join(dir, "wrong.json")
	writeDockerConfig(t, wrong, host, "alice", "nope")
	emptyDocker := filepath.Join(dir, "empty-docker") // no config.json: anonymous
	if err := os.MkdirAll(emptyDocker, 0o700); err != nil {
		t.Fatal(err)
	}
	anon := []string{"DOCKER_CONFIG=" + emptyDocker, "REGISTRY_AUTH_FILE="}

	// bundle apply --output docker:// without credentials: refused, clearly.
	bundleFile := filepath.Join(dir, "full.bundle")
	bfMust(t, bin, "bundle", "create", "--store", fx.store, "--progress", "none", "--full", fx.name, "-o", bundleFile)
	r := bfEnv(t, anon, bin, "bundle", "apply", "--store", filepath.Join(dir, "s0"), "--progress", "none", bundleFile, "--output", ref)
	checkAuthFailure(t, "bundle apply --output without credentials", r, host)
	// Wrong credentials: refused, and the message says whose.
	r = bfEnv(t, anon, bin, "bundle", "apply", "--store", filepath.Join(dir, "s0"), "--progress", "none", "--authfile", wrong, bundleFile, "--output", ref)
	checkAuthFailure(t, "bundle apply --output with wrong credentials", r, host)
	if !strings.Contains(r.stderr, wrong) {
		t.Errorf("wrong credentials: the error does not name %s:\n%s", wrong, r.stderr)
	}

	// With --authfile: the image lands in the registry with its digest.
	r = bfEnv(t, anon, bin, "bundle", "apply", "--store", filepath.Join(dir, "s1"), "--progress", "none", "--json", "--authfile", authfile, bundleFile, "--output", ref)
	if r.code != 0 {
		t.Fatalf("bundle apply --output with --authfile: exit %d\n%s", r.code, r.stderr)
	}
	// The registry holds the standard image (apply checked the digest it
	// wrote; skopeo reads it back with the same credentials).
	std := fx.export.Standard.Digest.String()
	inspect := exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "--authfile", authfile, ref)
	raw := cmdOut(t, inspect)
	if got := digestOf([]byte(raw)); got != std {
		t.Fatalf("the registry holds %s under the tag, want %s", got, std)
	}

	// export docker:// without credentials: refused, clearly.
	r = bfEnv(t, anon, bin, "export", "--store", filepath.Join(dir, "e0"), "--progress", "none", ref, "app:v1")
	checkAuthFailure(t, "export without credentials", r, host)

	// export docker:// with each way of naming the credentials.
	prev := ""
	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"--authfile", anon, []string{"--authfile", authfile}},
		{"$REGISTRY_AUTH_FILE", []string{"DOCKER_CONFIG=" + emptyDocker, "REGISTRY_AUTH_FILE=" + authfile}, nil},
		{"$DOCKER_CONFIG", []string{"DOCKER_CONFIG=" + dockerConfigDir(t, dir, host), "REGISTRY_AUTH_FILE="}, nil},
	} {
		args := append([]string{"export", "--store", filepath.Join(dir, "e-"+strings.Trim(c.name, "-$")), "--progress", "none"}, c.args...)
		r := bfEnv(t, c.env, bin, append(args, ref, "app:v1")...)
		if r.code != 0 {
			t.Fatalf("export with %s: exit %d\n%s", c.name, r.code, r.stderr)
		}
		got := strings.SplitN(r.stdout, "\n", 2)[0]
		if prev != "" && got != prev {
			t.Errorf("export with %s: standard digest %s, the previous way gave %s", c.name, got, prev)
		}
		prev = got
	}
}

func digestOf(b []byte) string { return "sha256:" + sha256Hex(b) }

// dockerConfigDir makes a $DOCKER_CONFIG directory with credentials for host.
func dockerConfigDir(t *testing.T, parent, host string) string {
	t.Helper()
	d := filepath.Join(parent, "docker")
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	writeDockerConfig(t, filepath.Join(d, "config.json"), host, "alice", "s3cret")
	return d
}

// tokenIssuer is a minimal token server for distribution's auth.token: it
// checks basic credentials and returns an ES256 JWT granting the scopes
// asked for, with its self-signed certificate in the x5c header (the
// registry trusts that certificate through its rootcertbundle).
type tokenIssuer struct {
	key             *ecdsa.PrivateKey
	certDER         []byte
	user, pass      string
	issuer, service string
}

func newTokenIssuer(t *testing.T, certFile string) *tokenIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "blockfile test token issuer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	putFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return &tokenIssuer{key: key, certDER: der, user: "alice", pass: "s3cret", issuer: "blockfile-test-issuer", service: "blockfile-test-registry"}
}

func (ti *tokenIssuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || u != ti.user || p != ti.pass {
		http.Error(w, `{"details":"wrong credentials"}`, http.StatusUnauthorized)
		return
	}
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	var grants []access
	for _, sc := range r.URL.Query()["scope"] {
		// repository:NAME:ACTIONS (NAME has no colon here)
		parts := strings.Split(sc, ":")
		if len(parts) != 3 {
			continue
		}
		grants = append(grants, access{Type: parts[0], Name: parts[1], Actions: strings.Split(parts[2], ",")})
	}
	now := time.Now()
	b64 := base64.RawURLEncoding
	hdr, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(ti.certDER)}})
	claims, _ := json.Marshal(map[string]any{
		"iss": ti.issuer, "sub": u, "aud": ti.service,
		"exp": now.Add(10 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprint(now.UnixNano()), "access": grants,
	})
	signed := b64.EncodeToString(hdr) + "." + b64.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signed))
	rr, ss, err := ecdsa.Sign(rand.Reader, ti.key, sum[:])
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	sig := make([]byte, 64)
	rr.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	tok := signed + "." + b64.EncodeToString(sig)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 600, "issued_at": now.Format(time.RFC3339)})
}

// TestRegistryTokenAuth: a distribution registry with token (bearer) auth,
// its tokens issued by a small issuer in the test. Export and bundle apply
// --output work with credentials from --authfile and fail with the clear
// message without them.
func TestRegistryTokenAuth(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	fx := smallFixture(t)
	dir := t.TempDir()
	ti := newTokenIssuer(t, filepath.Join(dir, "issuer.crt"))
	srv := httptest.NewServer(ti)
	defer srv.Close()
	reg := env.RegistryWith(t, harness.RegistryOptions{Name: "auth-token", Token: &harness.RegistryToken{
		// By name: go-containerregistry refuses token realms on private
		// or loopback IP literals (an SSRF guard) other than the registry's.
		Realm: strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/token", Service: ti.service, Issuer: ti.issuer, RootCertBundle: filepath.Join(dir, "issuer.crt"),
	}})
	t.Cleanup(func() { reg.Stop() })
	host := reg.Addr
	ref := "docker://" + host + "/team/app:v1"
	authfile := filepath.Join(dir, "auth.json")
	writeDockerConfig(t, authfile, host, "alice", "s3cret")
	empty := filepath.Join(dir, "empty-docker")
	if err := os.MkdirAll(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	anon := []string{"DOCKER_CONFIG=" + empty, "REGISTRY_AUTH_FILE="}

	bundleFile := filepath.Join(dir, "full.bundle")
	bfMust(t, bin, "bundle", "create", "--store", fx.store, "--progress", "none", "--full", fx.name, "-o", bundleFile)
	r := bfEnv(t, anon, bin, "bundle", "apply", "--store", filepath.Join(dir, "s0"), "--progress", "none", bundleFile, "--output", ref)
	checkAuthFailure(t, "token auth: bundle apply --output without credentials", r, host)
	r = bfEnv(t, anon, bin, "bundle", "apply", "--store", filepath.Join(dir, "s1"), "--progress", "none", "--authfile", authfile, bundleFile, "--output", ref)
	if r.code != 0 {
		t.Fatalf("token auth: bundle apply --output with --authfile: exit %d\n%s", r.code, r.stderr)
	}
	r = bfEnv(t, anon, bin, "export", "--store", filepath.Join(dir, "e0"), "--progress", "none", ref, "app:v1")
	checkAuthFailure(t, "token auth: export without credentials", r, host)
	r = bfEnv(t, anon, bin, "export", "--store", filepath.Join(dir, "e1"), "--progress", "none", "--authfile", authfile, ref, "app:v1")
	if r.code != 0 {
		t.Fatalf("token auth: export with --authfile: exit %d\n%s", r.code, r.stderr)
	}
}
