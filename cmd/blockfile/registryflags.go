package main

import (
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
