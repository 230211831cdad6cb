package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/transport"
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

// TestBuildKitProvenanceSurvivesBundle: buildkitd builds with a provenance
// attestation; export keeps BuildKit's attestation manifest in the standard
// index, re-pointed to the standard manifest (index annotation and in-toto
// subject), a bundle carries it, and apply with --output docker:// pushes it
// to a second registry where it describes the image that is there.
func TestBuildKitProvenanceSurvivesBundle(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	regB := env.ExtraRegistry(t, "site")
	dir := t.TempDir()
	writeRootfs(t, dir)
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\n"))
	const name = "example.test/sig/prov:1"
	archive := buildOCIArchive(t, env, dir, name, "--opt", "attest:provenance=mode=min")

	// What BuildKit wrote: an index with the image and its attestation.
	srcIdx, srcAtt, srcStmt := provenanceOf(t, "oci-archive:"+archive+":"+name)
	var srcImage digest.Digest
	for _, m := range srcIdx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] == "" {
			srcImage = m.Digest
		}
	}
	if srcAtt.Annotations["vnd.docker.reference.digest"] != srcImage.String() || srcStmt.Subject[0].Digest["sha256"] != srcImage.Encoded() {
		t.Fatalf("fixture: BuildKit's attestation does not describe its image %s: %+v %+v", srcImage, srcAtt, srcStmt.Subject)
	}

	ciStore := filepath.Join(t.TempDir(), "ci")
	res := bfExport(t, bin, ciStore, "oci-archive:"+archive+":"+name, "sig/prov:1")
	if len(res.Manifests) != 1 || len(res.Attestations) != 1 {
		t.Fatalf("export: %d manifests, attestations %+v; want one of each", len(res.Manifests), res.Attestations)
	}
	std := res.Manifests[0].Standard.Digest
	if std == srcImage {
		t.Fatal("fixture: export did not change the manifest digest; re-pointing would be untested")
	}
	if a := res.Attestations[0]; a.Source != srcAtt.Digest || a.Subject != std || a.Statements != 1 {
		t.Fatalf("export attestation %+v, want %s re-pointed to %s", a, srcAtt.Digest, std)
	}

	bundleFile := filepath.Join(t.TempDir(), "prov.bundle")
	bfMust(t, bin, "bundle", "create", "--store", ciStore, "--progress", "none", "--full", "-o", bundleFile, "sig/prov:1")
	site := filepath.Join(t.TempDir(), "site")
	target := regB + "/sig/prov:1"
	applied := applyJSON(t, bin, site, bundleFile, "--output", "docker://"+target)
	if applied.Images[0].Standard.Digest != res.Standard.Digest {
		t.Fatalf("apply wrote %s, export made %s", applied.Images[0].Standard.Digest, res.Standard.Digest)
	}

	// At the site registry: the attestation names the manifest that is
	// there, and says what BuildKit said.
	idx, att, stmt := provenanceOf(t, "docker://"+target)
	var siteImage digest.Digest
	for _, m := range idx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] == "" {
			siteImage = m.Digest
		}
	}
	if siteImage != std {
		t.Fatalf("site registry image %s, want the standard manifest %s", siteImage, std)
	}
	if att.Annotations["vnd.docker.reference.digest"] != std.String() {
		t.Errorf("site attestation entry names %s, want %s", att.Annotations["vnd.docker.reference.digest"], std)
	}
	if len(stmt.Subject) != 1 || stmt.Subject[0].Digest["sha256"] != std.Encoded() || stmt.Subject[0].Name != srcStmt.Subject[0].Name {
		t.Errorf("site provenance subject %+v, want %s named %s", stmt.Subject, std, srcStmt.Subject[0].Name)
	}
	if stmt.PredicateType != srcStmt.PredicateType || !bytes.Equal(compactJSON(t, stmt.Predicate), compactJSON(t, srcStmt.Predicate)) {
		t.Errorf("site provenance predicate differs from BuildKit's:\n%s\nvs\n%s", stmt.Predicate, srcStmt.Predicate)
	}
	if !strings.HasPrefix(stmt.PredicateType, "https://slsa.dev/provenance/") {
		t.Errorf("predicate type %q is not SLSA provenance", stmt.PredicateType)
	}
}

// inTotoStatement is the part of an in-toto statement the tests check.
type inTotoStatement struct {
	PredicateType string `json:"predicateType"`
	Subject       []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	Predicate json.RawMessage `json:"predicate"`
}

// provenanceOf reads the image index at ref (through blockfile's own
// transport, which verifies every digest), its attestation manifest entry and
// the provenance statement in it.
func provenanceOf(t *testing.T, ref string) (ocispec.Index, ocispec.Descriptor, inTotoStatement) {
	t.Helper()
	ctx := ctxT(t)
	src, err := transport.ParseSource(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	read := func(d ocispec.Descriptor, v any) {
		t.Helper()
		rc, err := src.Fetch(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatalf("%s %s: %v", ref, d.Digest, err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %v", ref, d.Digest, err)
		}
	}
	root, err := src.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if root.MediaType != ocispec.MediaTypeImageIndex {
		t.Fatalf("%s is a %s, want an image index", ref, root.MediaType)
	}
	var idx ocispec.Index
	read(root, &idx)
	var att *ocispec.Descriptor
	for i, m := range idx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			att = &idx.Manifests[i]
		}
	}
	if att == nil || len(idx.Manifests) != 2 {
		t.Fatalf("%s: index %+v, want an image and its attestation manifest", ref, idx.Manifests)
	}
	var m ocispec.Manifest
	read(*att, &m)
	for _, l := range m.Layers {
		if strings.HasPrefix(l.Annotations["in-toto.io/predicate-type"], "https://slsa.dev/provenance/") {
			var st inTotoStatement
			read(l, &st)
			return idx, *att, st
		}
	}
	t.Fatalf("%s: attestation manifest %s has no provenance layer: %+v", ref, att.Digest, m.Layers)
	return idx, *att, inTotoStatement{}
}

func compactJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
