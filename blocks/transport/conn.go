package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	hostsconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	gtransport "github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Registry says how blockfile reaches registries: the connection settings
// skopeo, oras and containerd users already keep. The zero value is the
// default: credentials from $REGISTRY_AUTH_FILE or the docker config (with
// its credential helpers), TLS verified, plain HTTP only to loopback, hosts
// from /etc/containerd/certs.d when it exists.
//
// Every verb that talks to a registry (export, pull, push, block push,
// bundle apply --output docker://, serve --upstream) builds its connections
// here, so flags mean the same everywhere.
type Registry struct {
	AuthFile  string // --authfile: a docker config.json-style file ("" = $REGISTRY_AUTH_FILE, else the docker config)
	PlainHTTP bool   // --plain-http: speak HTTP to any registry
	Insecure  bool   // --tls-verify=false: do not verify TLS certificates
	HostsDir  string // --hosts-dir: containerd certs.d layout ("" = /etc/containerd/certs.d when it exists)
}

// DefaultHostsDir is where containerd, and so BuildKit and Kubernetes nodes,
// keep per-registry connection settings (certs.d/<host>/hosts.toml).
const DefaultHostsDir = "/etc/containerd/certs.d"

// Endpoint is one host through which a reference is reached: the registry
// itself or, for pulls, one of its mirrors from hosts.toml.
type Endpoint struct {
	Host    string         // host[:port] connected to
	Mirror  bool           // a mirror from hosts.toml, not the registry named in the reference
	Resolve bool           // may resolve tags (hosts.toml capability "resolve"); else digests only
	Ref     name.Reference // the reference, rewritten to Host
	Options []remote.Option
	// HTTP is the same connection (transport and credentials) for the
	// requests go-containerregistry does not make: Range GETs of blobs.
	HTTP *HTTP
}

// HTTP is an endpoint's connection as an http.RoundTripper, for requests
// that go-containerregistry has no call for (a pull reads byte ranges of
// standard layers): the transport Options carry (TLS and client
// certificates from hosts.toml, its headers, the plain-HTTP guard) and the
// same credentials.
type HTTP struct {
	Transport http.RoundTripper
	Keychain  authn.Keychain
}

// RoundTripper returns a transport authenticated to read repo (basic or
// token authentication, by go-containerregistry's transport, as for every
// other request), adding the User-Agent Options send.
func (h *HTTP) RoundTripper(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	auth, err := authn.Resolve(ctx, h.Keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("%s: credentials: %w", repo, err)
	}
	rt, err := gtransport.NewWithContext(ctx, repo.Registry, auth, gtransport.NewUserAgent(h.Transport, userAgent), []string{repo.Scope(gtransport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", repo, err)
	}
	return rt, nil
}

// userAgent is what every registry request of blockfile sends.
const userAgent = "blockfile"

// Remote parses ref (host[:port]/repo[:tag|@digest], a "docker://" prefix
// accepted) and returns it with the go-containerregistry options that carry
// r's credentials and transport. It is the first host of hosts.toml that
// may push (the registry itself unless configured otherwise); PullEndpoints
// gives the mirrors too.
func (r Registry) Remote(ctx context.Context, ref string) (name.Reference, []remote.Option, error) {
	eps, err := r.endpoints(ctx, ref, false)
	if err != nil {
		return nil, nil, err
	}
	e := eps[0]
	return e.Ref, e.Options, nil
}

// PullEndpoints returns the endpoints to read ref from, in the order to try
// them: the hosts.toml mirrors that may pull, then the registry itself, as
// containerd does. Without a hosts.toml there is one endpoint, Remote's.
func (r Registry) PullEndpoints(ctx context.Context, ref string) ([]Endpoint, error) {
	return r.endpoints(ctx, ref, true)
}

func (r Registry) endpoints(ctx context.Context, ref string, pull bool) ([]Endpoint, error) {
	ref = strings.TrimPrefix(ref, "docker://")
	parsed, err := parseRemote(ref)
	if err != nil {
		return nil, err
	}
	reqHost := parsed.Context().RegistryStr()
	hosts, err := r.hosts(ctx, reqHost)
	if err != nil {
		return nil, fmt.Errorf("docker://%s: %w", ref, err)
	}
	// containerd's order: the [host] entries of hosts.toml, then server;
	// each operation uses the hosts whose capabilities allow it, in order.
	want := docker.HostCapabilityPush
	if pull {
		want = docker.HostCapabilityPull
	}
	var out []Endpoint
	seen := map[string]bool{}
	for _, h := range hosts {
		if !h.Capabilities.Has(want) || seen[h.Scheme+"://"+h.Host] {
			continue
		}
		seen[h.Scheme+"://"+h.Host] = true
		if h.Path != "/v2" {
			return nil, fmt.Errorf("docker://%s: %s: host %s://%s%s: only the standard /v2 path is supported", ref, r.hostsFile(reqHost), h.Scheme, h.Host, h.Path)
		}
		host := h.Host
		own := host == reqHost || (reqHost == name.DefaultRegistry && host == "registry-1.docker.io")
		if own {
			host = reqHost // let go-containerregistry map docker.io itself
		}
		plain := r.PlainHTTP || h.Scheme == "http" || isLoopbackHost(host)
		var nopts []name.Option
		if plain {
			nopts = append(nopts, name.Insecure)
		}
		full := host + "/" + parsed.Context().RepositoryStr()
		switch p := parsed.(type) {
		case name.Digest:
			full += "@" + p.DigestStr()
		case name.Tag:
			full += ":" + p.TagStr()
		}
		nr, err := name.ParseReference(full, nopts...)
		if err != nil {
			return nil, fmt.Errorf("docker://%s: host %s: %w", ref, host, err)
		}
		tr := r.roundTripper(h, plain)
		kc := r.keychain()
		out = append(out, Endpoint{
			Host:    host,
			Mirror:  !own,
			Resolve: h.Capabilities.Has(docker.HostCapabilityResolve),
			Ref:     nr,
			Options: []remote.Option{
				remote.WithContext(ctx),
				remote.WithAuthFromKeychain(kc),
				remote.WithUserAgent(userAgent),
				remote.WithTransport(tr),
			},
			HTTP: &HTTP{Transport: tr, Keychain: kc},
		})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("docker://%s: %s: no host may %s", ref, r.hostsFile(reqHost), map[bool]string{true: "pull", false: "push"}[pull])
	}
	return out, nil
}

// hostsDir is the certs.d root in effect, or "" for none.
func (r Registry) hostsDir() string {
	if r.HostsDir != "" {
		return r.HostsDir
	}
	if fi, err := os.Stat(DefaultHostsDir); err == nil && fi.IsDir() {
		return DefaultHostsDir
	}
	return ""
}

func (r Registry) hostsFile(host string) string {
	dir := r.hostsDir()
	if dir == "" {
		return "registry " + host
	}
	if d, err := hostsconfig.HostDirFromRoot(dir)(host); err == nil {
		return filepath.Join(d, "hosts.toml")
	}
	return "registry " + host
}

// hostsCache keeps one set of clients per configuration and registry, so
// connections are reused across the many Remote calls of one run.
var hostsCache sync.Map // hostsKey -> []docker.RegistryHost

type hostsKey struct {
	r    Registry
	host string
}

// hosts runs containerd's own hosts.toml reader (the code BuildKit and
// containerd use) for host: mirrors first, the server last, each with its
// *http.Client carrying the CA, client certificates and skip_verify set
// there.
func (r Registry) hosts(ctx context.Context, host string) ([]docker.RegistryHost, error) {
	key := hostsKey{r, host}
	if v, ok := hostsCache.Load(key); ok {
		return v.([]docker.RegistryHost), nil
	}
	opts := hostsconfig.HostOptions{DefaultScheme: "https"}
	if r.PlainHTTP {
		opts.DefaultScheme = "http"
	}
	if r.Insecure {
		opts.DefaultTLS = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // --tls-verify=false asks for it
	}
	if dir := r.hostsDir(); dir != "" {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("hosts directory %s: not a readable directory", dir)
		}
		opts.HostDir = hostsconfig.HostDirFromRoot(dir)
	}
	// containerd resolves "docker.io"; go-containerregistry says
	// "index.docker.io" for the same registry.
	lookup := host
	if host == name.DefaultRegistry {
		lookup = "docker.io"
	}
	hs, err := hostsconfig.ConfigureHosts(ctx, opts)(lookup)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.hostsFile(lookup), err)
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("%s: no hosts configured for %s", r.hostsFile(lookup), host)
	}
	hostsCache.Store(key, hs)
	return hs, nil
}

// roundTripper is the host's client transport with the hosts.toml headers
// added, refusing plain HTTP unless allowed: go-containerregistry would
// otherwise fall back to HTTP for private (RFC 1918) addresses too.
func (r Registry) roundTripper(h docker.RegistryHost, plainOK bool) http.RoundTripper {
	var base http.RoundTripper = http.DefaultTransport
	if h.Client != nil && h.Client.Transport != nil {
		base = h.Client.Transport
	}
	return &guardTransport{base: base, header: h.Header, plainOK: plainOK}
}

type guardTransport struct {
	base    http.RoundTripper
	header  http.Header
	plainOK bool
}

func (g *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.plainOK && !isLoopbackHost(req.URL.Host) {
		return nil, fmt.Errorf("plain HTTP to %s refused: give --plain-http, or server = \"http://%s\" in its hosts.toml", req.URL.Host, req.URL.Host)
	}
	if len(g.header) > 0 {
		req = req.Clone(req.Context())
		for k, vs := range g.header {
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
	}
	return g.base.RoundTrip(req)
}

// isLoopbackHost says whether host[:port] is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// authFile is the credentials file in effect and whether it was named
// explicitly (--authfile, $REGISTRY_AUTH_FILE) rather than the docker config.
func (r Registry) authFile() (string, bool) {
	if r.AuthFile != "" {
		return r.AuthFile, true
	}
	if f := os.Getenv("REGISTRY_AUTH_FILE"); f != "" {
		return f, true
	}
	// $DOCKER_CONFIG is read here, not through the docker/cli package,
	// which caches it for the life of the process.
	dir := os.Getenv("DOCKER_CONFIG")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "/"
		}
		dir = filepath.Join(home, ".docker")
	}
	return filepath.Join(dir, dockerconfig.ConfigFileName), false
}

func (r Registry) keychain() authn.Keychain { return fileKeychain{r} }

// fileKeychain reads credentials from one docker config.json-style file,
// through its credential helpers (credsStore, credHelpers) as docker does.
type fileKeychain struct{ r Registry }

func (k fileKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	auth, _, err := k.lookup(target)
	return auth, err
}

// lookup returns the authenticator for target and whether credentials were
// found for it.
func (k fileKeychain) lookup(target authn.Resource) (authn.Authenticator, bool, error) {
	file, explicit := k.r.authFile()
	cf, err := loadConfigFile(file, explicit)
	if err != nil {
		return nil, false, err
	}
	if cf == nil {
		if explicit {
			return nil, false, fmt.Errorf("credentials file %s: %w", file, os.ErrNotExist)
		}
		return authn.Anonymous, false, nil
	}
	for _, key := range []string{target.String(), target.RegistryStr()} {
		if key == name.DefaultRegistry {
			key = authn.DefaultAuthKey
		}
		ac, err := cf.GetAuthConfig(key)
		if err != nil {
			return nil, false, fmt.Errorf("credentials file %s: registry %s: %w", file, key, err)
		}
		if ac.Username != "" || ac.Password != "" || ac.Auth != "" || ac.IdentityToken != "" || ac.RegistryToken != "" {
			return authn.FromConfig(authn.AuthConfig{
				Username:      ac.Username,
				Password:      ac.Password,
				Auth:          ac.Auth,
				IdentityToken: ac.IdentityToken,
				RegistryToken: ac.RegistryToken,
			}), true, nil
		}
	}
	return authn.Anonymous, false, nil
}

// loadConfigFile parses a docker config.json. A missing default file is no
// error (anonymous access); a missing explicit one is.
func loadConfigFile(file string, explicit bool) (*configfile.ConfigFile, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	defer f.Close()
	cf, err := dockerconfig.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", file, err)
	}
	cf.Filename = file
	return cf, nil
}

// AuthError is a registry refusing access: 401 (no or wrong credentials) or
// 403 (credentials without the right). Its message names the registry, the
// credentials file consulted and what to do, so the CLI prints it alone
// instead of the HTTP exchange that led to it (still reachable by Unwrap).
type AuthError struct {
	Registry string // host[:port]
	Repo     string // repository, for 403
	Status   int    // 401 or 403
	File     string // credentials file consulted
	Found    bool   // whether it held credentials for Registry
	Err      error
}

func (e *AuthError) Error() string {
	login := fmt.Sprintf(`run "docker login %s" (it writes the docker config) or give --authfile FILE (or $REGISTRY_AUTH_FILE) with credentials for it`, e.Registry)
	switch {
	case e.Status == http.StatusForbidden:
		return fmt.Sprintf("registry %s denied access to %s (403) with the credentials from %s: the account lacks the permission, or %s", e.Registry, e.Repo, e.File, login)
	case e.Found:
		return fmt.Sprintf("registry %s refused the credentials for it in %s (401 unauthorized): they are wrong or expired; %s", e.Registry, e.File, login)
	default:
		return fmt.Sprintf("registry %s requires authentication (401 unauthorized) and %s holds no credentials for it: %s", e.Registry, e.File, login)
	}
}

func (e *AuthError) Unwrap() error { return e.Err }

// Explain turns a 401 or 403 from the registry of ref (anywhere in err's
// chain) into an *AuthError; other errors are returned as they are.
func (r Registry) Explain(ref name.Reference, err error) error {
	if err == nil {
		return nil
	}
	var ae *AuthError
	if errors.As(err, &ae) {
		return err
	}
	var te *gtransport.Error
	if !errors.As(err, &te) || (te.StatusCode != http.StatusUnauthorized && te.StatusCode != http.StatusForbidden) {
		return err
	}
	file, _ := r.authFile()
	_, found, lerr := fileKeychain{r}.lookup(ref.Context())
	if lerr != nil {
		return fmt.Errorf("%w (and %v)", err, lerr)
	}
	return &AuthError{
		Registry: ref.Context().RegistryStr(),
		Repo:     ref.Context().RepositoryStr(),
		Status:   te.StatusCode,
		File:     file,
		Found:    found,
		Err:      err,
	}
}
