package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, cn string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a leaf certificate for 127.0.0.1 (server) or a client.
func (ca testCA) issue(t *testing.T, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "blockfile-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// tlsRegistry serves an in-memory registry over TLS with a certificate from
// ca; with clientCA set it requires client certificates signed by it.
func tlsRegistry(t *testing.T, ca testCA, clientCA *testCA) string {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, false)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(registry.New(registry.Logger(nilLogger())))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCA != nil {
		pool := x509.NewCertPool()
		pool.AddCert(clientCA.cert)
		srv.TLS.ClientCAs = pool
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
	}
	srv.Config.ErrorLog = nilLogger()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://")
}

// hostDir writes certs.d/<host>/ (":port" as "_port_", containerd's layout)
// with the given files and returns the certs.d root.
func hostDir(t *testing.T, root, host string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(root, strings.Replace(host, ":", "_", 1)+"_")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// roundTrip pushes a test image to ref through reg and reads it back.
func roundTrip(t *testing.T, reg Registry, ref string, seed int64) error {
	t.Helper()
	ctx := context.Background()
	img := newTestImage(t, seed)
	sink, err := ParseSink(ctx, "docker://"+ref, WithRegistry(reg))
	if err != nil {
		return err
	}
	for _, d := range img.order {
		if err := sink.Push(ctx, d, strings.NewReader(string(img.blobs[d.Digest]))); err != nil {
			return err
		}
	}
	if err := sink.Commit(ctx, img.manifest); err != nil {
		return err
	}
	src, err := ParseSource(ctx, "docker://"+ref, WithRegistry(reg))
	if err != nil {
		return err
	}
	img.checkSource(t, src)
	return nil
}

func TestHostsTomlCA(t *testing.T) {
	ca := newTestCA(t, "test CA")
	host := tlsRegistry(t, ca, nil)
	// No CA: the certificate is refused.
	empty := t.TempDir()
	if err := roundTrip(t, Registry{HostsDir: empty}, host+"/app:v1", 1); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted certificate: got %v, want a certificate error", err)
	}
	// The CA from certs.d/<host>/hosts.toml.
	root := hostDir(t, t.TempDir(), host, map[string]string{
		"ca.crt":     string(ca.pem),
		"hosts.toml": fmt.Sprintf("server = \"https://%s\"\n[host.\"https://%s\"]\n  ca = \"ca.crt\"\n", host, host),
	})
	if err := roundTrip(t, Registry{HostsDir: root}, host+"/app:v1", 1); err != nil {
		t.Fatalf("CA from hosts.toml: %v", err)
	}
	// Docker's older layout, a bare ca.crt in certs.d/<host>/, is read too.
	root2 := hostDir(t, t.TempDir(), host, map[string]string{"ca.crt": string(ca.pem)})
	if err := roundTrip(t, Registry{HostsDir: root2}, host+"/app:v2", 2); err != nil {
		t.Fatalf("CA from certs.d/<host>/ca.crt: %v", err)
	}
}

func TestHostsTomlClientCertificate(t *testing.T) {
	ca := newTestCA(t, "server CA")
	clientCA := newTestCA(t, "client CA")
	host := tlsRegistry(t, ca, &clientCA)
	certPEM, keyPEM := clientCA.issue(t, true)
	noClient := hostDir(t, t.TempDir(), host, map[string]string{
		"ca.crt":     string(ca.pem),
		"hosts.toml": fmt.Sprintf("server = \"https://%s\"\n[host.\"https://%s\"]\n  ca = \"ca.crt\"\n", host, host),
	})
	if err := roundTrip(t, Registry{HostsDir: noClient}, host+"/app:v1", 3); err == nil {
		t.Fatal("a registry requiring client certificates accepted a client without one")
	}
	withClient := hostDir(t, t.TempDir(), host, map[string]string{
		"ca.crt":      string(ca.pem),
		"client.cert": string(certPEM),
		"client.key":  string(keyPEM),
		"hosts.toml": fmt.Sprintf("server = \"https://%s\"\n[host.\"https://%s\"]\n  ca = \"ca.crt\"\n  client = [[\"client.cert\", \"client.key\"]]\n",
			host, host),
	})
	if err := roundTrip(t, Registry{HostsDir: withClient}, host+"/app:v1", 3); err != nil {
		t.Fatalf("client certificate from hosts.toml: %v", err)
	}
}

func TestSkipVerify(t *testing.T) {
	ca := newTestCA(t, "unknown CA")
	host := tlsRegistry(t, ca, nil)
	root := hostDir(t, t.TempDir(), host, map[string]string{
		"hosts.toml": fmt.Sprintf("server = \"https://%s\"\n[host.\"https://%s\"]\n  skip_verify = true\n", host, host),
	})
	if err := roundTrip(t, Registry{HostsDir: root}, host+"/app:v1", 4); err != nil {
		t.Fatalf("skip_verify in hosts.toml: %v", err)
	}
	// --tls-verify=false does the same without a hosts directory.
	if err := roundTrip(t, Registry{HostsDir: t.TempDir(), Insecure: true}, host+"/app:v2", 5); err != nil {
		t.Fatalf("--tls-verify=false: %v", err)
	}
}

// countingRegistry is a plain-HTTP in-memory registry that counts GETs.
func countingRegistry(t *testing.T) (host string, gets *atomic.Int64, srv *httptest.Server) {
	t.Helper()
	gets = new(atomic.Int64)
	h := registry.New(registry.Logger(nilLogger()))
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path != "/v2/" {
			gets.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), gets, srv
}

func TestHostsTomlMirrorFallback(t *testing.T) {
	ctx := context.Background()
	upstream, upGets, _ := countingRegistry(t)
	mirror, mirrorGets, mirrorSrv := countingRegistry(t)
	onlyUp := newTestImage(t, 6)
	both := newTestImage(t, 7)
	push := func(host, tag string, img testImage) {
		sink, err := ParseSink(ctx, "docker://"+host+"/lib/app:"+tag, WithRegistry(Registry{HostsDir: t.TempDir()}))
		if err != nil {
			t.Fatal(err)
		}
		img.pushTo(t, sink)
		if err := sink.Commit(ctx, img.manifest); err != nil {
			t.Fatal(err)
		}
	}
	push(upstream, "a", onlyUp)
	push(upstream, "b", both)
	push(mirror, "b", both)
	root := hostDir(t, t.TempDir(), upstream, map[string]string{
		"hosts.toml": fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", upstream, mirror),
	})
	reg := Registry{HostsDir: root}
	read := func(tag string, img testImage) {
		t.Helper()
		src, err := ParseSource(ctx, "docker://"+upstream+"/lib/app:"+tag, WithRegistry(reg))
		if err != nil {
			t.Fatal(err)
		}
		img.checkSource(t, src)
	}
	// The mirror holds b: it serves all of it, the registry nothing.
	upGets.Store(0)
	read("b", both)
	if mirrorGets.Load() == 0 || upGets.Load() != 0 {
		t.Fatalf("tag b: mirror served %d GETs, registry %d; want all from the mirror", mirrorGets.Load(), upGets.Load())
	}
	// The mirror lacks a: the registry serves it.
	upGets.Store(0)
	read("a", onlyUp)
	if upGets.Load() == 0 {
		t.Fatal("tag a: the registry served nothing; want the fallback from the mirror to it")
	}
	// The mirror down: the registry serves b.
	mirrorSrv.Close()
	upGets.Store(0)
	read("b", both)
	if upGets.Load() == 0 {
		t.Fatal("mirror down: the registry served nothing")
	}
	// Pushes never go to a mirror.
	ref, _, err := reg.Remote(ctx, upstream+"/lib/app:c")
	if err != nil {
		t.Fatal(err)
	}
	if ref.Context().RegistryStr() != upstream {
		t.Fatalf("push endpoint %s, want the registry %s", ref, upstream)
	}
}

func TestPlainHTTPOnlyToLoopback(t *testing.T) {
	g := &guardTransport{base: http.DefaultTransport}
	req, _ := http.NewRequest(http.MethodGet, "http://10.1.2.3:5000/v2/", nil)
	if _, err := g.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "--plain-http") {
		t.Fatalf("plain HTTP to a private address: got %v, want a refusal naming --plain-http", err)
	}
	for _, h := range []string{"127.0.0.1:5000", "localhost:5000", "[::1]:5000"} {
		if !isLoopbackHost(h) {
			t.Errorf("%s: not taken for loopback", h)
		}
	}
	for _, h := range []string{"10.1.2.3:5000", "registry.example:5000", "localhost.example.com"} {
		if isLoopbackHost(h) {
			t.Errorf("%s: taken for loopback", h)
		}
	}
}

// basicAuthRegistry serves an in-memory registry that requires user:pass.
func basicAuthRegistry(t *testing.T, user, pass string) string {
	t.Helper()
	h := registry.New(registry.Logger(nilLogger()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func writeAuthFile(t *testing.T, path, host, user, pass string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	if err := os.WriteFile(path, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuthFileAndClearError(t *testing.T) {
	host := basicAuthRegistry(t, "alice", "s3cret")
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", filepath.Join(dir, "no-docker-config"))
	t.Setenv("REGISTRY_AUTH_FILE", "")
	hosts := Registry{HostsDir: t.TempDir()}

	// No credentials anywhere: one error, naming the registry and the fix.
	err := roundTrip(t, hosts, host+"/app:v1", 8)
	var ae *AuthError
	if !errors.As(err, &ae) || ae.Found || ae.Registry != host {
		t.Fatalf("no credentials: got %v, want an *AuthError for %s", err, host)
	}
	if msg := ae.Error(); !strings.Contains(msg, host) || !strings.Contains(msg, "--authfile") || !strings.Contains(msg, "docker login") {
		t.Fatalf("message %q does not name the registry and what to do", msg)
	}

	// --authfile with the right credentials.
	good := filepath.Join(dir, "auth.json")
	writeAuthFile(t, good, host, "alice", "s3cret")
	withFile := hosts
	withFile.AuthFile = good
	if err := roundTrip(t, withFile, host+"/app:v1", 8); err != nil {
		t.Fatalf("--authfile: %v", err)
	}
	// Wrong credentials: the message says they were refused.
	bad := filepath.Join(dir, "bad.json")
	writeAuthFile(t, bad, host, "alice", "wrong")
	withBad := hosts
	withBad.AuthFile = bad
	err = roundTrip(t, withBad, host+"/app:v2", 9)
	if !errors.As(err, &ae) || !ae.Found || !strings.Contains(ae.Error(), bad) {
		t.Fatalf("wrong credentials: got %v, want an *AuthError saying %s's credentials were refused", err, bad)
	}
	// $REGISTRY_AUTH_FILE.
	t.Setenv("REGISTRY_AUTH_FILE", good)
	if err := roundTrip(t, hosts, host+"/app:v3", 10); err != nil {
		t.Fatalf("$REGISTRY_AUTH_FILE: %v", err)
	}
	// $DOCKER_CONFIG/config.json.
	t.Setenv("REGISTRY_AUTH_FILE", "")
	cfgDir := filepath.Join(dir, "docker")
	os.MkdirAll(cfgDir, 0o700)
	writeAuthFile(t, filepath.Join(cfgDir, "config.json"), host, "alice", "s3cret")
	t.Setenv("DOCKER_CONFIG", cfgDir)
	if err := roundTrip(t, hosts, host+"/app:v4", 11); err != nil {
		t.Fatalf("$DOCKER_CONFIG: %v", err)
	}
	// A missing --authfile is an error of its own, not anonymous access.
	missing := hosts
	missing.AuthFile = filepath.Join(dir, "absent.json")
	if err := roundTrip(t, missing, host+"/app:v5", 12); err == nil || !strings.Contains(err.Error(), "absent.json") {
		t.Fatalf("missing --authfile: got %v", err)
	}
}

func TestAuthFileCredentialHelper(t *testing.T) {
	host := basicAuthRegistry(t, "bob", "helper-pass")
	bin := t.TempDir()
	// A docker credential helper: `docker-credential-NAME get` reads the
	// server URL on stdin and prints {"Username","Secret"}.
	script := "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"bob\",\"Secret\":\"helper-pass\"}' \"$server\"\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-blockfiletest"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	file := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(`{"credHelpers":{%q:"blockfiletest"}}`, host)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, Registry{HostsDir: t.TempDir(), AuthFile: file}, host+"/app:v1", 13); err != nil {
		t.Fatalf("credential helper named in --authfile: %v", err)
	}
}
