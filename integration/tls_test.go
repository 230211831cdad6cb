package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockfile/blockfile/integration/harness"
)

// testCert is a key pair and certificate; ca signs others.
type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func (c testCert) writePEM(t *testing.T, certFile, keyFile string) {
	t.Helper()
	putFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.der}))
	if keyFile != "" {
		kder, err := x509.MarshalECPrivateKey(c.key)
		if err != nil {
			t.Fatal(err)
		}
		putFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	}
}

// makeCert makes a CA (parent nil) or a leaf signed by parent: a server
// certificate for 127.0.0.1, or a client certificate.
func makeCert(t *testing.T, cn string, parent *testCert, client bool) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	signer, signerKey := tmpl, key
	switch {
	case parent == nil:
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	case client:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		signer, signerKey = parent.cert, parent.key
	default:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{cert: cert, key: key, der: der}
}

// TestRegistryTLSHostsDir: a distribution registry serving TLS with a
// certificate from a private CA and requiring client certificates. With a
// containerd hosts directory (certs.d/<host>/hosts.toml naming the CA and
// the client certificate) hydrate pushes to it and export reads back the
// same image; without it the certificate is refused, and without the
// client certificate the registry refuses the connection.
func TestRegistryTLSHostsDir(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	fx := smallFixture(t)
	dir := t.TempDir()

	ca := makeCert(t, "blockfile test CA", nil, false)
	server := makeCert(t, "registry", &ca, false)
	clientCA := makeCert(t, "blockfile client CA", nil, false)
	client := makeCert(t, "blockfile client", &clientCA, true)
	server.writePEM(t, filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	clientCA.writePEM(t, filepath.Join(dir, "client-ca.crt"), "")
	reg := env.RegistryWith(t, harness.RegistryOptions{
		Name:    "tls-clientcert",
		TLSCert: filepath.Join(dir, "server.crt"), TLSKey: filepath.Join(dir, "server.key"),
		ClientCAs: []string{filepath.Join(dir, "client-ca.crt")},
	})
	t.Cleanup(func() { reg.Stop() })
	ref := "docker://" + reg.Addr + "/team/app:v1"

	// certs.d/127.0.0.1_PORT_/ as containerd lays it out.
	hostDir := func(root string, withClient bool) string {
		d := filepath.Join(root, strings.Replace(reg.Addr, ":", "_", 1)+"_")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		ca.writePEM(t, filepath.Join(d, "ca.crt"), "")
		toml := fmt.Sprintf("server = \"https://%s\"\n\n[host.\"https://%s\"]\n  ca = \"ca.crt\"\n", reg.Addr, reg.Addr)
		if withClient {
			client.writePEM(t, filepath.Join(d, "client.cert"), filepath.Join(d, "client.key"))
			toml += "  client = [[\"client.cert\", \"client.key\"]]\n"
		}
		putFile(t, filepath.Join(d, "hosts.toml"), []byte(toml))
		return root
	}
	full := hostDir(filepath.Join(dir, "certs.d"), true)
	noClient := hostDir(filepath.Join(dir, "certs-noclient.d"), false)
	empty := filepath.Join(dir, "certs-empty.d")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}

	// Untrusted CA: refused.
	r := bfRun(t, bin, "hydrate", "--store", fx.store, "--progress", "none", "--hosts-dir", empty, fx.name, ref)
	if r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("push without the CA: exit %d, want 1 and a certificate error:\n%s", r.code, r.stderr)
	}
	// CA but no client certificate: the registry refuses the handshake.
	r = bfRun(t, bin, "hydrate", "--store", fx.store, "--progress", "none", "--hosts-dir", noClient, fx.name, ref)
	if r.code != 1 {
		t.Fatalf("push without a client certificate: exit %d, want 1:\n%s", r.code, r.stderr)
	}
	// Both from hosts.toml: pushed, and read back to the same digest.
	r = bfMust(t, bin, "hydrate", "--store", fx.store, "--progress", "none", "--hosts-dir", full, fx.name, ref)
	std := fx.export.Standard.Digest.String()
	if got := strings.TrimSpace(r.stdout); got != std {
		t.Fatalf("hydrate to the TLS registry wrote %s, want %s", got, std)
	}
	res := bfExport(t, bin, filepath.Join(dir, "store"), ref, "app:v1", "--hosts-dir", full)
	if res.Standard.Digest.String() == "" {
		t.Fatal("export from the TLS registry gave no standard digest")
	}
	// --tls-verify=false alone does not supply the client certificate.
	r = bfRun(t, bin, "export", "--store", filepath.Join(dir, "store2"), "--progress", "none", "--tls-verify=false", "--hosts-dir", empty, ref, "app:v1")
	if r.code != 1 {
		t.Fatalf("export with --tls-verify=false but no client certificate: exit %d, want 1", r.code)
	}
}
