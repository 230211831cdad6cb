package main

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks/transport"
)

// registryFlags adds the connection flags skopeo, oras and containerd users
// know (--authfile, --plain-http, --tls-verify, --hosts-dir) to cmd, for
// every verb that talks to a registry, and returns the settings they fill.
func registryFlags(cmd *cobra.Command) *transport.Registry {
	var r transport.Registry
	tlsVerify := true
	f := cmd.Flags()
	f.StringVar(&r.AuthFile, "authfile", "", "registry credentials file in docker config.json format (default $REGISTRY_AUTH_FILE, else the docker config and its credential helpers)")
	f.BoolVar(&r.PlainHTTP, "plain-http", false, "speak plain HTTP to the registry (always allowed for loopback addresses)")
	f.BoolVar(&tlsVerify, "tls-verify", true, "verify the registry's TLS certificate")
	f.StringVar(&r.HostsDir, "hosts-dir", "", "containerd hosts directory (certs.d/<host>/hosts.toml: CA, client certificates, skip_verify, mirrors; default /etc/containerd/certs.d when it exists)")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		r.Insecure = !tlsVerify
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
	return &r
}

// readFrom runs read against each endpoint ref is read from (the hosts.toml
// mirrors that may pull, then the registry, as containerd orders them) until
// one succeeds. read gets the endpoint's reference, its connection options
// and the same connection for Range GETs (registry.PullOptions.HTTP). When
// all fail it returns the registry's own error, explained (one clear
// message for a refused login).
func readFrom(ctx context.Context, reg *transport.Registry, ref string, read func(ref name.Reference, opts []remote.Option, conn *transport.HTTP) error) error {
	eps, err := reg.PullEndpoints(ctx, ref)
	if err != nil {
		return usageError{err}
	}
	var last error
	for _, e := range eps {
		err := read(e.Ref, e.Options, e.HTTP)
		if err == nil {
			return nil
		}
		last = reg.Explain(e.Ref, err)
		if e.Mirror {
			last = fmt.Errorf("mirror %s: %w", e.Host, last)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return last
}
