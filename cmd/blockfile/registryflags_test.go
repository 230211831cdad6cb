package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestRegistryVerbsHaveConnectionFlags: every verb that reads or writes
// docker:// takes the same connection flags, and --tls-verify=false reaches
// the settings.
func TestRegistryVerbsHaveConnectionFlags(t *testing.T) {
	root := newRootCmd()
	for _, path := range [][]string{{"export"}, {"hydrate"}, {"bundle", "apply"}, {"block", "push"}, {"serve"}} {
		cmd, _, err := root.Find(path)
		if err != nil || cmd.Name() != path[len(path)-1] {
			t.Fatalf("%s: %v", strings.Join(path, " "), err)
		}
		for _, f := range []string{"authfile", "plain-http", "tls-verify", "hosts-dir"} {
			if cmd.Flags().Lookup(f) == nil {
				t.Errorf("blockfile %s lacks --%s", strings.Join(path, " "), f)
			}
		}
	}

	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	reg := registryFlags(cmd)
	cmd.SetArgs([]string{"--tls-verify=false", "--plain-http", "--authfile", "/a.json", "--hosts-dir", "/h"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !reg.Insecure || !reg.PlainHTTP || reg.AuthFile != "/a.json" || reg.HostsDir != "/h" {
		t.Fatalf("flags not applied: %+v", *reg)
	}
}

// TestServeUpstreamUsage: an --upstream that is not HOST[:PORT] (a scheme,
// a path) and a negative --upstream-ttl are usage errors (exit 2), before
// anything listens.
func TestServeUpstreamUsage(t *testing.T) {
	bin := buildBlockfile(t)
	dir := t.TempDir()
	for _, args := range [][]string{
		{"serve", "--addr", "127.0.0.1:0", "--upstream", "https://registry.example"},
		{"serve", "--addr", "127.0.0.1:0", "--upstream", "registry.example/team"},
		{"serve", "--addr", "127.0.0.1:0", "--upstream", "registry.example", "--upstream-ttl", "-1s"},
	} {
		_, stderr, code := run(t, bin, dir, args...)
		if code != 2 || !strings.Contains(stderr, "upstream") {
			t.Errorf("blockfile %s: exit %d, stderr %q; want exit 2 naming the upstream", strings.Join(args, " "), code, stderr)
		}
	}
}
