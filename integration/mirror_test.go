package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockfile/blockfile/integration/harness"
)

// TestRegistryMirrorHostsToml: with a hosts.toml naming a mirror for a
// registry, export docker://<registry>/... reads from the mirror first (an
// image only the mirror holds is found) and falls back to the registry (an
// image only the registry holds is found too); pushes go to the registry.
func TestRegistryMirrorHostsToml(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	fx := smallFixture(t)
	dir := t.TempDir()
	upstream := env.RegistryWith(t, harness.RegistryOptions{Name: "mirror-upstream"})
	t.Cleanup(func() { upstream.Stop() })
	mirror := env.RegistryWith(t, harness.RegistryOptions{Name: "mirror-mirror"})
	t.Cleanup(func() { mirror.Stop() })
	noHosts := filepath.Join(dir, "none.d")
	if err := os.MkdirAll(noHosts, 0o755); err != nil {
		t.Fatal(err)
	}
	// The image as "only-mirror" on the mirror, "only-upstream" upstream.
	bfMust(t, bin, "hydrate", "--store", fx.store, "--progress", "none", "--hosts-dir", noHosts, fx.name, "docker://"+mirror.Addr+"/team/app:only-mirror")
	bfMust(t, bin, "hydrate", "--store", fx.store, "--progress", "none", "--hosts-dir", noHosts, fx.name, "docker://"+upstream.Addr+"/team/app:only-upstream")

	certs := filepath.Join(dir, "certs.d")
	hd := filepath.Join(certs, strings.Replace(upstream.Addr, ":", "_", 1)+"_")
	putFile(t, filepath.Join(hd, "hosts.toml"), []byte(fmt.Sprintf(
		"server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", upstream.Addr, mirror.Addr)))

	for _, tag := range []string{"only-mirror", "only-upstream"} {
		ref := "docker://" + upstream.Addr + "/team/app:" + tag
		r := bfRun(t, bin, "export", "--store", filepath.Join(dir, "plain-"+tag), "--progress", "none", "--hosts-dir", noHosts, ref, "app:1")
		if (r.code == 0) != (tag == "only-upstream") {
			t.Fatalf("export %s without hosts.toml: exit %d\n%s", ref, r.code, r.stderr)
		}
		res := bfExport(t, bin, filepath.Join(dir, "store-"+tag), ref, "app:1", "--hosts-dir", certs)
		if res.Standard.Digest == "" {
			t.Fatalf("export %s through the mirror config: no digest", ref)
		}
	}
	// A push names the registry, never the pull-only mirror.
	bfMust(t, bin, "hydrate", "--store", fx.store, "--progress", "none", "--hosts-dir", certs, fx.name, "docker://"+upstream.Addr+"/team/app:pushed")
	if r := bfRun(t, bin, "export", "--store", filepath.Join(dir, "m"), "--progress", "none", "--hosts-dir", noHosts, "docker://"+mirror.Addr+"/team/app:pushed", "app:1"); r.code == 0 {
		t.Fatal("a push through the mirror config landed on the mirror")
	}
	bfExport(t, bin, filepath.Join(dir, "u"), "docker://"+upstream.Addr+"/team/app:pushed", "app:1", "--hosts-dir", noHosts)
}
