package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// RegistryOptions configures a distribution registry started with
// StartRegistryWith. The zero value is a plain-HTTP registry without auth.
type RegistryOptions struct {
	// Name tells the registry's state directory (<Dir>/<Name>), config
	// and log apart; required, and unique within the Env.
	Name string
	// TLSCert and TLSKey (PEM files) make it serve HTTPS.
	TLSCert, TLSKey string
	// ClientCAs (PEM files) make it require client certificates signed by
	// one of them (with TLS only).
	ClientCAs []string
	// Htpasswd (a bcrypt htpasswd file, `htpasswd -Bbn`) turns on basic
	// auth.
	Htpasswd string
	// Token turns on bearer token auth (distribution's auth.token).
	Token *RegistryToken
}

// RegistryToken is distribution's auth.token configuration: the registry
// sends clients to Realm for a JWT, which it checks against RootCertBundle.
type RegistryToken struct {
	Realm, Service, Issuer string
	RootCertBundle         string // PEM file of the certificates that sign tokens
}

// Registry is one distribution registry started by StartRegistryWith. It
// can be stopped, garbage-collected offline and started again on the same
// address and storage.
type Registry struct {
	Addr    string // 127.0.0.1:<port>
	Config  string // the config.yml path, for `garbage-collect`
	Storage string // the storage root
	TLS     bool

	e    *Env
	bin  string
	name string
	p    *process
}

// registryBin is Debian's docker-registry or $BLOCKFILE_REGISTRY_BIN.
func registryBin() (string, error) {
	bin := os.Getenv("BLOCKFILE_REGISTRY_BIN")
	if bin == "" {
		bin = "docker-registry"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("registry binary %q not found (apt-get install docker-registry): %w", bin, err)
	}
	return path, nil
}

var registryName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// StartRegistryWith starts a distribution registry with opts on a free
// 127.0.0.1 port. Each call starts a new one; see StartRegistry for the
// shared plain one.
func (e *Env) StartRegistryWith(ctx context.Context, opts RegistryOptions) (*Registry, error) {
	if !registryName.MatchString(opts.Name) {
		return nil, fmt.Errorf("registry name %q: want [a-z0-9-]+", opts.Name)
	}
	bin, err := registryBin()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &Registry{
		Addr:    fmt.Sprintf("127.0.0.1:%d", port),
		Config:  filepath.Join(e.Dir, opts.Name+".yml"),
		Storage: filepath.Join(e.Dir, opts.Name),
		TLS:     opts.TLSCert != "",
		e:       e,
		bin:     bin,
		name:    opts.Name,
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", r.Storage, r.Addr)
	if opts.TLSCert != "" {
		fmt.Fprintf(&b, "  tls:\n    certificate: %s\n    key: %s\n", opts.TLSCert, opts.TLSKey)
		if len(opts.ClientCAs) > 0 {
			b.WriteString("    clientcas:\n")
			for _, c := range opts.ClientCAs {
				fmt.Fprintf(&b, "      - %s\n", c)
			}
		}
	}
	switch {
	case opts.Htpasswd != "" && opts.Token != nil:
		return nil, fmt.Errorf("registry %s: htpasswd and token auth are exclusive", opts.Name)
	case opts.Htpasswd != "":
		fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: blockfile-test\n    path: %s\n", opts.Htpasswd)
	case opts.Token != nil:
		fmt.Fprintf(&b, "auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			opts.Token.Realm, opts.Token.Service, opts.Token.Issuer, opts.Token.RootCertBundle)
	}
	if err := os.WriteFile(r.Config, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// Start starts the registry (again) on its address and storage.
func (r *Registry) Start(ctx context.Context) error {
	if r.p != nil {
		select {
		case <-r.p.exited:
		default:
			return fmt.Errorf("registry %s: already running", r.name)
		}
	}
	r.e.progressf("starting registry %s at %s", r.name, r.Addr)
	p, err := r.e.spawn("registry-"+r.name, r.bin, "serve", r.Config)
	if err != nil {
		return err
	}
	r.p = p
	return r.e.waitReady(ctx, p, 30*time.Second, func(ctx context.Context) error {
		if r.TLS {
			// Up when it accepts connections: a TLS probe could need the
			// client certificate the registry asks for.
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.Addr)
			if err != nil {
				return err
			}
			c.Close()
			return nil
		}
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + r.Addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
}

// Stop stops the registry (SIGTERM, then SIGKILL).
func (r *Registry) Stop() error {
	if r.p == nil {
		return nil
	}
	return r.p.stop(15 * time.Second)
}

// GarbageCollect runs `docker-registry garbage-collect` on the stopped
// registry's storage (with --delete-untagged if asked) and returns its
// output.
func (r *Registry) GarbageCollect(ctx context.Context, deleteUntagged bool) (string, error) {
	if r.p != nil {
		select {
		case <-r.p.exited:
		default:
			return "", fmt.Errorf("registry %s: stop it before garbage-collect", r.name)
		}
	}
	args := []string{"garbage-collect"}
	if deleteUntagged {
		args = append(args, "--delete-untagged")
	}
	args = append(args, r.Config)
	out, err := exec.CommandContext(ctx, r.bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", r.bin, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// RegistryWith is StartRegistryWith for tests: it fails t on error.
func (e *Env) RegistryWith(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	r, err := e.StartRegistryWith(ctxOf(t), opts)
	if err != nil {
		t.Fatalf("harness: registry %s: %v", opts.Name, err)
	}
	return r
}
