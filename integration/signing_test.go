package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/integration/harness"
)

// cosignRun runs cosign with a key password in the environment and no
// sigstore services reachable (no transparency log, no Fulcio); it returns
// the combined output and whether it exited 0.
func cosignRun(t *testing.T, bin, dir string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"COSIGN_PASSWORD=blockfile-test",
		"HOME="+dir, // no docker config or sigstore TUF cache from the host
		"TUF_ROOT="+filepath.Join(dir, "tuf"),
		"COSIGN_EXPERIMENTAL=0",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("cosign %s: %v", strings.Join(args, " "), err)
		}
	}
	return out.String(), err == nil
}

func cosignMust(t *testing.T, bin, dir string, args ...string) string {
	t.Helper()
	out, ok := cosignRun(t, bin, dir, args...)
	if !ok {
		t.Fatalf("cosign %s failed:\n%s", strings.Join(args, " "), out)
	}
	return out
}

// TestSignaturesSurviveBundle: cosign signs (and attests an SBOM for) the
// standard image in a registry, with a local key and no transparency log;
// blockfile export brings the signature and the attestation into a store,
// a bundle carries them, apply at an empty site pushes the image and them
// to a second registry, and cosign verifies both there with the public key.
// A signature of the digest BuildKit produced is reported as not kept,
// since export changes that digest.
func TestSignaturesSurviveBundle(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	cosign := env.Cosign(t)
	regA := env.Registry(t)
	regB := env.ExtraRegistry(t, "site")
	f := smallFixture(t)
	keys := t.TempDir()
	cosignMust(t, cosign, keys, "generate-key-pair")
	otherKeys := t.TempDir()
	cosignMust(t, cosign, otherKeys, "generate-key-pair")
	key, pub := filepath.Join(keys, "cosign.key"), filepath.Join(keys, "cosign.pub")
	insecure := "--allow-insecure-registry"

	// What BuildKit built, pushed as is and signed: export re-frames its
	// layers, so this signature cannot follow.
	raw := regA + "/sig/raw:1"
	cmdOut(t, exec.Command("skopeo", "copy", "--dest-tls-verify=false", "oci-archive:"+f.archive+":"+f.name, "docker://"+raw))
	cosignMust(t, cosign, keys, "sign", "--key", key, "--tlog-upload=false", "--yes", insecure, raw)
	buildStore := filepath.Join(t.TempDir(), "build-store")
	res := bfExport(t, bin, buildStore, "docker://"+raw, "sig/app:1")
	if len(res.Referrers) != 0 {
		t.Fatalf("export kept %d referrers of a re-framed manifest: %+v", len(res.Referrers), res.Referrers)
	}
	if len(res.DroppedReferrers) != 1 || res.DroppedReferrers[0].Count != 1 || res.DroppedReferrers[0].Standard != res.Standard.Digest {
		t.Fatalf("export did not report the signature of the BuildKit digest as dropped: %+v", res.DroppedReferrers)
	}
	std := res.Standard.Digest
	r := bfRun(t, bin, "export", "--store", filepath.Join(t.TempDir(), "s"), "--progress", "none", "docker://"+raw, "x")
	if r.code != 0 || !strings.Contains(r.stderr, "sign "+std.String()) {
		t.Errorf("export did not warn to sign the standard digest (exit %d):\n%s", r.code, r.stderr)
	}

	// The pipeline as docs/SIGNING.md has it: hydrate the standard image
	// into the registry, sign that digest, export from the registry.
	pushed := regA + "/sig/app:1"
	if got := bfHydrate(t, bin, buildStore, "sig/app:1", "docker://"+pushed); got != std.String() {
		t.Fatalf("hydrate pushed %s, export said %s", got, std)
	}
	signed := regA + "/sig/app@" + std.String()
	cosignMust(t, cosign, keys, "sign", "--key", key, "--tlog-upload=false", "--yes", insecure, signed)
	sbom := filepath.Join(keys, "sbom.spdx.json")
	putFile(t, sbom, []byte(`{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT","name":"sig-app","documentNamespace":"https://example.test/sig-app","creationInfo":{"created":"2026-01-01T00:00:00Z","creators":["Tool: blockfile-test"]},"packages":[]}`))
	cosignMust(t, cosign, keys, "attest", "--key", key, "--tlog-upload=false", "--yes", insecure, "--type", "spdxjson", "--predicate", sbom, signed)
	cosignMust(t, cosign, keys, "verify", "--key", pub, "--insecure-ignore-tlog", insecure, signed)

	ciStore := filepath.Join(t.TempDir(), "ci-store")
	res = bfExport(t, bin, ciStore, "docker://"+pushed, "sig/app:1")
	if res.Standard.Digest != std {
		t.Fatalf("export of the standard image from the registry gave %s, want the same %s", res.Standard.Digest, std)
	}
	suffixes := map[string]bool{}
	for _, rf := range res.Referrers {
		if rf.Subject != std {
			t.Errorf("referrer %s has subject %s, want %s", rf.Descriptor.Digest, rf.Subject, std)
		}
		suffixes[rf.Descriptor.Annotations[blocks.AnnotationReferrerTag]] = true
	}
	if len(res.Referrers) != 2 || !suffixes["sig"] || !suffixes["att"] {
		t.Fatalf("export kept %+v, want cosign's .sig and .att", res.Referrers)
	}

	bundleFile := filepath.Join(t.TempDir(), "app.bundle")
	bfMust(t, bin, "bundle", "create", "--store", ciStore, "--progress", "none", "--full", "-o", bundleFile, "sig/app:1")
	h := bundleHeader(t, bin, bundleFile)
	if len(h.Images) != 1 || len(h.Images[0].Referrers) != 2 {
		t.Fatalf("bundle header images %+v, want one image with 2 referrers", h.Images)
	}

	// The site: an empty store, a registry that never saw the image.
	site := filepath.Join(t.TempDir(), "site-store")
	target := regB + "/sig/app:1"
	if _, ok := cosignRun(t, cosign, keys, "verify", "--key", pub, "--insecure-ignore-tlog", insecure, regB+"/sig/app@"+std.String()); ok {
		t.Fatal("cosign verified at the site registry before apply")
	}
	applyJSON(t, bin, site, bundleFile, "--output", "docker://"+target)
	atSite := regB + "/sig/app@" + std.String()
	out := cosignMust(t, cosign, keys, "verify", "--key", pub, "--insecure-ignore-tlog", insecure, atSite)
	if !strings.Contains(out, std.String()) {
		t.Errorf("cosign verify output does not name %s:\n%s", std, out)
	}
	cosignMust(t, cosign, keys, "verify-attestation", "--key", pub, "--insecure-ignore-tlog", insecure, "--type", "spdxjson", atSite)
	// The tag form verifies too (cosign resolves it to the same digest).
	cosignMust(t, cosign, keys, "verify", "--key", pub, "--insecure-ignore-tlog", insecure, target)
	// A key that did not sign fails: the check above is a real one.
	if out, ok := cosignRun(t, cosign, otherKeys, "verify", "--key", filepath.Join(otherKeys, "cosign.pub"), "--insecure-ignore-tlog", insecure, atSite); ok {
		t.Fatalf("cosign verified with a key that never signed:\n%s", out)
	}

	// The site store keeps them (gc included) for later pushes.
	s := openStoreT(t, site)
	refs, err := s.Referrers(ctxT(t), std)
	if err != nil || len(refs) != 2 {
		t.Fatalf("site store referrers of %s: %v, %v", std, refs, err)
	}
	bfMust(t, bin, "gc", "--store", site)
	if refs, err := s.Referrers(ctxT(t), std); err != nil || len(refs) != 2 {
		t.Fatalf("site store referrers after gc: %v, %v", refs, err)
	}
	if r := bfRun(t, bin, "verify", "--store", site); r.code != 0 {
		t.Fatalf("site store verify after gc: %s%s", r.stdout, r.stderr)
	}
}
