package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/integration/harness"
)

// rootDigest reads back the root digest an image reference resolves to.
func rootDigest(t testing.TB, ref string) digest.Digest {
	t.Helper()
	src, err := transport.ParseSource(ctxT(t), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d, err := src.Resolve(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return d.Digest
}

// TestBlocksRoundTripRichImage: an image built by buildkitd with several
// layers, whiteouts, a hard link, a symlink, a PAX long name, an empty file,
// 512-multiple sizes and a 110 MB file exports and hydrates to oci-archive
// and oci with the identical manifest digest, with the source config (and so
// its diff_ids) unchanged.
//
// xattrs and opaque dirs are in blocks_xattr_test.go: BuildKit's layer
// writer (containerd's archive.ChangeWriter) keeps only security.capability
// among xattrs and never writes .wh..wh..opq (its overlay differ emits one
// whiteout per removed file), so user.* xattrs and opaque markers there come
// from GNU tar layers that buildkitd builds FROM and carries through.
func TestBlocksRoundTripRichImage(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	f := richFixture(t)

	// The source really has the awkward cases.
	dir, layers := archiveLayers(t, f.archive)
	entries := map[string]byte{}
	for _, l := range layers {
		layerEntries(t, filepath.Join(dir, "blobs", "sha256", l.Digest.Encoded()), entries)
	}
	for want, typ := range map[string]byte{"data/.wh.keep": tar.TypeReg, "data/old/.wh.f": tar.TypeReg, "links/b": tar.TypeLink,
		"app/hard.jar": tar.TypeReg, "app/sym.jar": tar.TypeSymlink, longPath: tar.TypeReg, "app/empty": tar.TypeReg, "big": tar.TypeReg} {
		if got, ok := entries[want]; !ok || got != typ {
			t.Errorf("source layers: entry %q has type %q (present %v), want %q", want, got, ok, typ)
		}
	}

	res := f.export
	var bigBlock, jarBlock bool
	for _, l := range res.Manifests[0].Layers {
		if l.BlockBytes >= 110000000 {
			bigBlock = true
		}
		if l.Blocks > 0 && l.BlockBytes >= int64(len(jarBytes)) && l.BlockBytes < 110000000 {
			jarBlock = true
		}
	}
	if !bigBlock || !jarBlock {
		t.Errorf("want the 110 MB file and the jar as blocks; layers: %+v", res.Manifests[0].Layers)
	}
	img, err := image.Resolve(ctxT(t), openStoreT(t, f.store), f.name)
	if err != nil {
		t.Fatal(err)
	}
	var srcIdx ocispec.Index
	readJSONT(t, filepath.Join(dir, "index.json"), &srcIdx)
	var srcMan ocispec.Manifest
	readJSONT(t, filepath.Join(dir, "blobs", "sha256", srcIdx.Manifests[0].Digest.Encoded()), &srcMan)
	if img.Manifests[0].Manifest.Config.Digest != srcMan.Config.Digest {
		t.Errorf("standard config %s, source config %s: must be unchanged", img.Manifests[0].Manifest.Config.Digest, srcMan.Config.Digest)
	}

	out := t.TempDir()
	for _, dest := range []string{"oci-archive:" + filepath.Join(out, "rich.tar"), "oci:" + filepath.Join(out, "rich-layout")} {
		got := bfHydrate(t, bin, f.store, f.name, dest)
		if got != res.Standard.Digest.String() {
			t.Fatalf("hydrate to %s printed %s, want %s", dest, got, res.Standard.Digest)
		}
		if d := rootDigest(t, dest); d != res.Standard.Digest {
			t.Fatalf("%s holds %s, want %s", dest, d, res.Standard.Digest)
		}
	}
	// Export of the hydrated image is the same standard image, all members reused.
	again := bfExport(t, bin, copyStore(t, f.store), "oci-archive:"+filepath.Join(out, "rich.tar"), "again")
	if again.Standard.Digest != res.Standard.Digest || again.NewMembers != 0 {
		t.Errorf("re-export: %s with %d new members, want %s and 0", again.Standard.Digest, again.NewMembers, res.Standard.Digest)
	}
}

// TestBlocksMultiPlatform: a two-platform index from buildkitd (FROM scratch
// + COPY only) hydrates to the identical index digest.
func TestBlocksMultiPlatform(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	dir := t.TempDir()
	writeRootfs(t, dir)
	putFile(t, filepath.Join(dir, "arch-amd64/which"), []byte("amd64\n"))
	putFile(t, filepath.Join(dir, "arch-arm64/which"), []byte("arm64\n"))
	putFile(t, filepath.Join(dir, "arch-amd64/lib.so"), randBytes(10, 100<<10))
	putFile(t, filepath.Join(dir, "arch-arm64/lib.so"), randBytes(11, 100<<10))
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nARG TARGETARCH\nCOPY rootfs/ /\nCOPY arch-${TARGETARCH}/ /arch/\n"))
	archive := buildOCIArchive(t, env, dir, "example.test/blocks/multi:1", "--opt", "platform=linux/amd64,linux/arm64")

	storeDir := filepath.Join(t.TempDir(), "store")
	res := bfExport(t, bin, storeDir, "oci-archive:"+archive, "multi")
	if res.Standard.MediaType != ocispec.MediaTypeImageIndex || len(res.Manifests) != 2 {
		t.Fatalf("standard %s with %d manifests; want an index of 2", res.Standard.MediaType, len(res.Manifests))
	}
	archs := []string{res.Manifests[0].Platform.Architecture, res.Manifests[1].Platform.Architecture}
	slices.Sort(archs)
	if archs[0] != "amd64" || archs[1] != "arm64" {
		t.Errorf("platforms %v", archs)
	}
	out := t.TempDir()
	for _, dest := range []string{"oci-archive:" + filepath.Join(out, "multi.tar"), "oci:" + filepath.Join(out, "multi")} {
		if got := bfHydrate(t, bin, storeDir, "multi", dest); got != res.Standard.Digest.String() {
			t.Fatalf("hydrate to %s: %s, want %s", dest, got, res.Standard.Digest)
		}
		if d := rootDigest(t, dest); d != res.Standard.Digest {
			t.Fatalf("%s holds %s, want %s", dest, d, res.Standard.Digest)
		}
	}
	// The shared rootfs layer's block set is listed once for both platforms.
	var idx ocispec.Index
	if err := openStoreT(t, storeDir).GetJSON(ctxT(t), res.Index, &idx); err != nil {
		t.Fatal(err)
	}
	seen := map[digest.Digest]bool{}
	for _, e := range idx.Manifests {
		if seen[e.Digest] {
			t.Errorf("image index lists %s twice", e.Digest)
		}
		seen[e.Digest] = true
	}
}

// TestBlocksSameJarTwoImages: the same jar at two paths, with another mtime
// and owner, in two images, is one block member in the store.
func TestBlocksSameJarTwoImages(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)

	a := t.TempDir()
	putFile(t, filepath.Join(a, "x.jar"), jarBytes)
	putFile(t, filepath.Join(a, "Dockerfile"), []byte("FROM scratch\nCOPY x.jar /app/libs/x.jar\n"))
	b := t.TempDir()
	putFile(t, filepath.Join(b, "y.jar"), jarBytes)
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(b, "y.jar"), old, old); err != nil {
		t.Fatal(err)
	}
	putFile(t, filepath.Join(b, "Dockerfile"), []byte("FROM scratch\nCOPY --chown=1000:1000 --chmod=600 y.jar /opt/other/renamed.jar\n"))
	archA := buildOCIArchive(t, env, a, "example.test/blocks/jar-a:1")
	archB := buildOCIArchive(t, env, b, "example.test/blocks/jar-b:1")

	storeDir := filepath.Join(t.TempDir(), "store")
	resA := bfExport(t, bin, storeDir, "oci-archive:"+archA, "jar-a")
	resB := bfExport(t, bin, storeDir, "oci-archive:"+archB, "jar-b")
	if resA.NewMembers != 1 || resB.NewMembers != 0 || resB.ReusedMembers != 1 {
		t.Errorf("members: a new %d; b new %d reused %d; want 1; 0, 1", resA.NewMembers, resB.NewMembers, resB.ReusedMembers)
	}
	raw := digest.FromBytes(jarBytes)
	s := openStoreT(t, storeDir)
	members := map[digest.Digest]bool{}
	for _, name := range []string{"jar-a", "jar-b"} {
		img, err := image.Resolve(ctxT(t), s, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range img.Manifests[0].Layers {
			if m, ok := stubMembers(t, s, l)[raw]; ok {
				members[m.Digest] = true
			}
		}
	}
	if len(members) != 1 {
		t.Fatalf("the jar is held by %d members, want 1: %v", len(members), members)
	}
	// The member index agrees.
	if m, ok, err := s.LookupMember(ctxT(t), raw, blocks.Gzip); err != nil || !ok || !members[m.Digest] {
		t.Errorf("member index: %s -> %s, %v, %v; want %v", raw, m.Digest, ok, err, members)
	}
	for _, name := range []string{"jar-a", "jar-b"} {
		res := resA
		if name == "jar-b" {
			res = resB
		}
		if got := bfHydrate(t, bin, storeDir, name, "oci:"+filepath.Join(t.TempDir(), name)); got != res.Standard.Digest.String() {
			t.Errorf("hydrate %s: %s, want %s", name, got, res.Standard.Digest)
		}
	}
}

// TestBlocksSkopeoCopyKeepsDigest: skopeo copies the hydrated image to a
// registry with its digest; blockfile pushes it there itself with the same
// digest; and an export from the registry gives the same standard image.
func TestBlocksSkopeoCopyKeepsDigest(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	reg := env.Registry(t)
	f := richFixture(t)
	want := f.export.Standard.Digest

	layout := filepath.Join(t.TempDir(), "layout")
	bfHydrate(t, bin, f.store, f.name, "oci:"+layout+":rich")
	digestFile := filepath.Join(t.TempDir(), "digest")
	cmdOut(t, exec.Command("skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false", "--digestfile", digestFile,
		"oci:"+layout+":rich", "docker://"+reg+"/blocks/rich:skopeo"))
	got, err := os.ReadFile(digestFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != want.String() {
		t.Fatalf("skopeo copy wrote %s, want %s", got, want)
	}
	rawDigest := func(ref string) digest.Digest {
		raw := cmdOut(t, exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref))
		return digest.FromString(raw)
	}
	if d := rawDigest(reg + "/blocks/rich:skopeo"); d != want {
		t.Fatalf("registry serves %s, want %s", d, want)
	}

	// blockfile's own docker:// sink and source.
	if got := bfHydrate(t, bin, f.store, f.name, "docker://"+reg+"/blocks/rich:direct"); got != want.String() {
		t.Fatalf("hydrate to the registry printed %s, want %s", got, want)
	}
	if d := rawDigest(reg + "/blocks/rich:direct"); d != want {
		t.Fatalf("registry serves %s after blockfile hydrate, want %s", d, want)
	}
	res := bfExport(t, bin, filepath.Join(t.TempDir(), "store"), "docker://"+reg+"/blocks/rich:direct", "from-registry")
	if res.Standard.Digest != want {
		t.Fatalf("export from the registry: %s, want %s", res.Standard.Digest, want)
	}
}

// TestBlocksUmociUnpack: umoci unpacks the hydrated gzip image to the right
// files (whiteouts applied, the jar's and the big file's bytes intact).
func TestBlocksUmociUnpack(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	f := richFixture(t)
	layout := filepath.Join(t.TempDir(), "layout")
	bfHydrate(t, bin, f.store, f.name, "oci:"+layout+":rich")
	bundle := filepath.Join(t.TempDir(), "bundle")
	cmdOut(t, exec.Command("umoci", "unpack", "--image", layout+":rich", bundle))
	rootfs := filepath.Join(bundle, "rootfs")

	data, err := os.ReadFile(filepath.Join(rootfs, "app/libs/x.jar"))
	if err != nil {
		t.Fatal(err)
	}
	if sha256Hex(data) != sha256Hex(jarBytes) {
		t.Errorf("app/libs/x.jar: sha256 %s, want %s", sha256Hex(data), sha256Hex(jarBytes))
	}
	if data, err := os.ReadFile(filepath.Join(rootfs, longPath)); err != nil || sha256Hex(data) != sha256Hex(randBytes(4, 70000)) {
		t.Errorf("%s: %v", longPath, err)
	}
	if st, err := os.Stat(filepath.Join(rootfs, "big")); err != nil || st.Size() != 110000000 {
		t.Errorf("big: %v %v", st, err)
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "app/sym.jar")); err != nil || target != "libs/x.jar" {
		t.Errorf("app/sym.jar -> %q, %v", target, err)
	}
	// buildkitd writes a link made to a lower layer's file as a copy...
	if data, err := os.ReadFile(filepath.Join(rootfs, "app/hard.jar")); err != nil || sha256Hex(data) != sha256Hex(jarBytes) {
		t.Errorf("app/hard.jar: %v", err)
	}
	// ...and a link within one layer as a tar hard link.
	st1, err1 := os.Stat(filepath.Join(rootfs, "links/a"))
	st2, err2 := os.Stat(filepath.Join(rootfs, "links/b"))
	if err1 != nil || err2 != nil || !os.SameFile(st1, st2) {
		t.Errorf("links/b is not a hard link of links/a (%v %v)", err1, err2)
	}
	for _, gone := range []string{"data/keep", "data/old/f"} {
		mustAbsent(t, filepath.Join(rootfs, gone))
	}
	if data, err := os.ReadFile(filepath.Join(rootfs, "data/old/g")); err != nil || string(data) != "two\n" {
		t.Errorf("data/old/g = %q, %v", data, err)
	}
}

// TestBlocksCtrRun: containerd imports the hydrated oci-archive and runs
// it; sha256sum inside the container prints the jar's digest.
func TestBlocksCtrRun(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	_, ctr := env.Containerd(t)
	f := richFixture(t)
	archive := filepath.Join(t.TempDir(), "rich.tar")
	bfHydrate(t, bin, f.store, f.name, "oci-archive:"+archive)
	cmdOut(t, ctr("images", "import", archive))
	t.Cleanup(func() { _ = ctr("images", "rm", f.name).Run() })
	if ls := cmdOut(t, ctr("images", "ls")); !strings.Contains(ls, f.name) || !strings.Contains(ls, f.export.Standard.Digest.String()) {
		t.Fatalf("ctr images ls does not show %s at %s:\n%s", f.name, f.export.Standard.Digest, ls)
	}
	out := cmdOut(t, ctr("run", "--rm", f.name, "blocks-ctr-run", "sha256sum", "/app/libs/x.jar"))
	if want := sha256Hex(jarBytes) + "  /app/libs/x.jar\n"; out != want {
		t.Fatalf("ctr run printed %q, want %q", out, want)
	}
}

// TestBlocksZstdCtrRun: exported with --compression zstd, the hydrated
// image (zstd layers, one frame per block) is imported and run by containerd.
func TestBlocksZstdCtrRun(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	_, ctr := env.Containerd(t)
	f := richFixture(t)
	storeDir := filepath.Join(t.TempDir(), "store")
	const name = "example.test/blocks/rich-zstd:1"
	res := bfExport(t, bin, storeDir, "oci-archive:"+f.archive, name, "--compression", "zstd")
	for _, l := range res.Manifests[0].Layers {
		if l.Standard.MediaType != ocispec.MediaTypeImageLayerZstd {
			t.Fatalf("layer %s has media type %s, want zstd", l.Standard.Digest, l.Standard.MediaType)
		}
	}
	archive := filepath.Join(t.TempDir(), "zstd.tar")
	if got := bfHydrate(t, bin, storeDir, name, "oci-archive:"+archive); got != res.Standard.Digest.String() {
		t.Fatalf("hydrate printed %s, want %s", got, res.Standard.Digest)
	}
	cmdOut(t, ctr("images", "import", archive))
	t.Cleanup(func() { _ = ctr("images", "rm", name).Run() })
	out := cmdOut(t, ctr("run", "--rm", name, "blocks-zstd-run", "sha256sum", "/app/libs/x.jar"))
	if want := sha256Hex(jarBytes) + "  /app/libs/x.jar\n"; out != want {
		t.Fatalf("ctr run printed %q, want %q", out, want)
	}
}

// TestBlocksTarListsStubs: the real tar lists .import. stubs in a blocked
// layer where the block files were, and `blockfile inspect` counts them.
func TestBlocksTarListsStubs(t *testing.T) {
	harness.RequireIntegration(t)
	f := smallFixture(t)
	img, err := image.Resolve(ctxT(t), openStoreT(t, f.store), f.name)
	if err != nil {
		t.Fatal(err)
	}
	l := img.Manifests[0].Layers[0]
	if !l.HasBlocks() {
		t.Fatal("the rootfs layer has no blocks")
	}
	listing := cmdOut(t, exec.Command("tar", "tzf", openStoreT(t, f.store).BlobPath(l.Blocked.Digest)))
	names := strings.Split(strings.TrimSpace(listing), "\n")
	longStub := filepath.Join(filepath.Dir(longPath), ".import."+filepath.Base(longPath))
	for _, want := range []string{"app/libs/.import.x.jar", "app/exact/.import.65536.bin", longStub, "app/small.txt", "app/empty"} {
		if !slices.Contains(names, want) {
			t.Errorf("tar tzf of the blocked layer lacks %q:\n%s", want, listing)
		}
	}
	for _, gone := range []string{"app/libs/x.jar", "app/exact/65536.bin"} {
		if slices.Contains(names, gone) {
			t.Errorf("blocked layer still lists %q", gone)
		}
	}
	stubs := 0
	for _, n := range names {
		if strings.HasPrefix(filepath.Base(n), blocks.StubPrefix) {
			stubs++
		}
	}
	env := harness.Get(t)
	var info image.Info
	r := bfMust(t, env.BlockfileBin(t), "inspect", "--store", f.store, "--json", f.name)
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, r.stdout)
	}
	if info.Stubs != stubs || info.Manifests[0].Layers[0].Stubs != stubs || info.Standard.Digest != f.export.Standard.Digest {
		t.Errorf("inspect: %d stubs (layer 0: %d), standard %s; tar lists %d stubs, export said %s",
			info.Stubs, info.Manifests[0].Layers[0].Stubs, info.Standard.Digest, stubs, f.export.Standard.Digest)
	}
}

// TestBlocksTamperFailsClosed: through the CLI, a member whose bytes were
// changed, a stub naming a block its block set does not list, and a
// truncated blocked layer each fail with a clear message (exit 1) and leave
// DEST absent.
func TestBlocksTamperFailsClosed(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	f := smallFixture(t)
	jarRaw := digest.FromBytes(jarBytes)

	// jarMember finds the jar's member and its layer in a store.
	jarLayer := func(t *testing.T, storeDir string) (*image.Image, int, ocispec.Descriptor) {
		s := openStoreT(t, storeDir)
		img, err := image.Resolve(ctxT(t), s, f.name)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range img.Manifests[0].Layers {
			if m, ok := stubMembers(t, s, l)[jarRaw]; ok {
				return img, i, m
			}
		}
		t.Fatal("no member holds the jar")
		return nil, 0, ocispec.Descriptor{}
	}

	cases := []struct {
		name   string
		tamper func(t *testing.T, storeDir string)
		want   string // in stderr
	}{
		{"member bytes", func(t *testing.T, storeDir string) {
			_, _, m := jarLayer(t, storeDir)
			p := openStoreT(t, storeDir).BlobPath(m.Digest)
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0xff
			os.Chmod(p, 0o644)
			putFile(t, p, data)
		}, "digest mismatch"},
		{"unlisted block", func(t *testing.T, storeDir string) {
			img, i, m := jarLayer(t, storeDir)
			l := img.Manifests[0].Layers[i]
			var keep []ocispec.Descriptor
			for _, x := range l.Members {
				if x.Digest != m.Digest {
					keep = append(keep, x)
				}
			}
			rewriteLayer(t, storeDir, img, i, l.Blocked, keep)
		}, "not listed"},
		{"truncated blocked layer", func(t *testing.T, storeDir string) {
			img, i, _ := jarLayer(t, storeDir)
			l := img.Manifests[0].Layers[i]
			s := openStoreT(t, storeDir)
			data, err := os.ReadFile(s.BlobPath(l.Blocked.Digest))
			if err != nil {
				t.Fatal(err)
			}
			data = data[:len(data)*2/3]
			cut := ocispec.Descriptor{MediaType: l.Blocked.MediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
			if err := s.Push(ctxT(t), cut, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			rewriteLayer(t, storeDir, img, i, cut, l.Members)
		}, "malformed blocked layer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			storeDir := copyStore(t, f.store)
			c.tamper(t, storeDir)
			out := t.TempDir()
			for _, dest := range []string{"oci-archive:" + filepath.Join(out, "x.tar"), "oci:" + filepath.Join(out, "x")} {
				r := bfRun(t, bin, "hydrate", "--store", storeDir, "--progress", "quiet", f.name, dest)
				if r.code != 1 {
					t.Fatalf("hydrate to %s: exit %d, want 1\nstdout: %s\nstderr: %s", dest, r.code, r.stdout, r.stderr)
				}
				if !strings.Contains(r.stderr, c.want) {
					t.Errorf("hydrate to %s: stderr %q does not mention %q", dest, r.stderr, c.want)
				}
				t.Logf("%s: %s", dest, strings.TrimSpace(r.stderr))
			}
			if left := siblings(t, out); len(left) != 0 {
				t.Fatalf("failed hydrates left %v", left)
			}
		})
	}
}

// rewriteLayer replaces blocked layer i of img's first manifest with
// blocked (served by a block set listing members) and re-tags the image, as
// a hostile or damaged store could.
func rewriteLayer(t *testing.T, storeDir string, img *image.Image, i int, blocked ocispec.Descriptor, members []ocispec.Descriptor) {
	t.Helper()
	ctx := ctxT(t)
	s := openStoreT(t, storeDir)
	m := img.Manifests[0]
	old := m.Layers[i]
	bm := m.BlockedManifest
	bm.Layers = slices.Clone(bm.Layers)
	bm.Layers[i] = blocked
	newBM, err := s.PutJSON(ctx, ocispec.MediaTypeImageManifest, bm)
	if err != nil {
		t.Fatal(err)
	}
	var set ocispec.Manifest
	if err := s.GetJSON(ctx, *old.BlockSet, &set); err != nil {
		t.Fatal(err)
	}
	set.Layers = members
	set.Annotations = map[string]string{blocks.AnnotationBlockSetOf: blocked.Digest.String()}
	newSet, err := s.PutJSON(ctx, ocispec.MediaTypeImageManifest, set)
	if err != nil {
		t.Fatal(err)
	}
	idx := img.IndexManifest
	idx.Manifests = slices.Clone(idx.Manifests)
	for j, e := range idx.Manifests {
		switch e.Digest {
		case m.Blocked.Digest:
			e.Digest, e.Size = newBM.Digest, newBM.Size
		case old.BlockSet.Digest:
			e.Digest, e.Size = newSet.Digest, newSet.Size
			e.Annotations = map[string]string{blocks.AnnotationBlockSetOf: blocked.Digest.String()}
		}
		idx.Manifests[j] = e
	}
	newIdx, err := s.PutJSON(ctx, ocispec.MediaTypeImageIndex, idx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, img.Name, newIdx); err != nil {
		t.Fatal(err)
	}
}

// TestBlocksMemoryFlat2GB: exporting and hydrating a ~2 GB image keeps the
// blockfile process under 150 MB peak RSS. The image is written directly
// (an OCI layout with one streamed gzip layer of 32 files of 64 MiB, each
// 8 MiB of PRNG bytes then zeros): this is about blockfile's memory, not
// buildkitd's.
func TestBlocksMemoryFlat2GB(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	const (
		files    = 32
		fileSize = 64 << 20
		randPart = 8 << 20
		limitKiB = 150 * 1024
	)
	layout := filepath.Join(t.TempDir(), "big")
	start := time.Now()
	writeBigLayout(t, layout, files, fileSize, randPart)
	t.Logf("generated a %d MiB image in %s", files*fileSize>>20, time.Since(start).Round(time.Second))

	storeDir := filepath.Join(t.TempDir(), "store")
	start = time.Now()
	r := bfMeasured(t, bin, "export", "--store", storeDir, "--json", "--progress", "quiet", "oci:"+layout, "big")
	t.Logf("export: %s, peak RSS %s", time.Since(start).Round(time.Second), fmtKiB(r.maxRSSKiB))
	var res image.ExportResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatal(err)
	}
	if res.Blocks != files {
		t.Errorf("export found %d blocks, want %d", res.Blocks, files)
	}
	if r.maxRSSKiB > limitKiB {
		t.Errorf("export peak RSS %s, limit 150 MiB", fmtKiB(r.maxRSSKiB))
	}
	out := filepath.Join(t.TempDir(), "big.tar")
	start = time.Now()
	r = bfMeasured(t, bin, "hydrate", "--store", storeDir, "--progress", "quiet", "big", "oci-archive:"+out)
	t.Logf("hydrate: %s, peak RSS %s", time.Since(start).Round(time.Second), fmtKiB(r.maxRSSKiB))
	if strings.TrimSpace(r.stdout) != res.Standard.Digest.String() {
		t.Errorf("hydrate printed %s, want %s", r.stdout, res.Standard.Digest)
	}
	if r.maxRSSKiB > limitKiB {
		t.Errorf("hydrate peak RSS %s, limit 150 MiB", fmtKiB(r.maxRSSKiB))
	}
}

// writeBigLayout writes an OCI layout with one gzip layer, streaming.
func writeBigLayout(t *testing.T, dir string, files, fileSize, randPart int) {
	t.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(blobs, "layer-")
	if err != nil {
		t.Fatal(err)
	}
	comp := sha256.New()
	diff := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, comp), 1<<20)
	zw, _ := kgzip.NewWriterLevel(bw, kgzip.BestSpeed)
	tw := tar.NewWriter(io.MultiWriter(zw, diff))
	rng := rand.New(rand.NewSource(99))
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	for i := range files {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/f%02d.bin", i), Mode: 0o644, Size: int64(fileSize), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < fileSize; n += len(buf) {
			chunk := zero
			if n < randPart {
				rng.Read(buf)
				chunk = buf
			}
			if _, err := tw.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	st, _ := tmp.Stat()
	tmp.Close()
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.NewDigest(digest.SHA256, comp), Size: st.Size()}
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, layer.Digest.Encoded())); err != nil {
		t.Fatal(err)
	}
	put := func(mt string, v any) ocispec.Descriptor {
		data, _ := json.Marshal(v)
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
		putFile(t, filepath.Join(blobs, d.Digest.Encoded()), data)
		return d
	}
	cfg := put(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.NewDigest(digest.SHA256, diff)}},
	})
	man := put(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer},
	})
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{man}})
	putFile(t, filepath.Join(dir, "index.json"), idx)
	putFile(t, filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`))
}

// TestBlocksMinBlockSizeFlag: --min-block-size takes binary units and picks
// which files become blocks; a bad value is a usage error (exit 2).
func TestBlocksMinBlockSizeFlag(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	f := smallFixture(t)
	for size, want := range map[string]int{
		"1MiB":   0, // nothing that large
		"128KiB": 1, // x.jar (300 KiB)
		"65537":  2, // and the 70000-byte long-name file
		"64KiB":  3, // and exact/65536.bin
	} {
		res := bfExport(t, bin, filepath.Join(t.TempDir(), "store"), "oci-archive:"+f.archive, "s", "--min-block-size", size)
		if res.Blocks != want {
			t.Errorf("--min-block-size %s: %d blocks, want %d", size, res.Blocks, want)
		}
	}
	r := bfRun(t, bin, "export", "--store", t.TempDir(), "--min-block-size", "12XB", "oci-archive:"+f.archive, "s")
	if r.code != 2 || !strings.Contains(r.stderr, "--min-block-size") {
		t.Errorf("bad size: exit %d, stderr %q; want 2 and a message naming the flag", r.code, r.stderr)
	}
}

// TestBlocksInterruptLeavesNothing: Ctrl-C during hydrate aborts the sink:
// no archive and no temp file are left.
func TestBlocksInterruptLeavesNothing(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	f := richFixture(t)
	out := t.TempDir()
	cmd := exec.Command(bin, "hydrate", "--store", f.store, "--progress", "quiet", f.name, "oci-archive:"+filepath.Join(out, "x.tar"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The archive's temp file exists from the start until the final rename:
	// signal once it is there, while the 110 MB layer is being written.
	deadline := time.Now().Add(30 * time.Second)
	for len(siblings(t, out)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("interrupted hydrate: exit %d, want 1 (stderr: %s)", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "context canceled") {
		t.Errorf("stderr %q does not say it was canceled", stderr.String())
	}
	if left := siblings(t, out); len(left) != 0 {
		t.Fatalf("interrupted hydrate left %v", left)
	}
}
