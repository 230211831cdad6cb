package transport

import (
	"context"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
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

// Remote parses ref (host[:port]/repo[:tag|@digest], a "docker://" prefix
// accepted) and returns it with the go-containerregistry options that carry
// r's credentials and transport.
func (r Registry) Remote(ctx context.Context, ref string) (name.Reference, []remote.Option, error) {
	ref = strings.TrimPrefix(ref, "docker://")
	nr, err := parseRemote(ref)
	if err != nil {
		return nil, nil, err
	}
	return nr, remoteOptions(ctx), nil
}
