package integration

import (
	"archive/tar"
	"compress/gzip"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/blockfile/blockfile/integration/harness"
)

// What reaches a layer tar from the real buildkitd, found by reading
// BuildKit v0.33.1 and containerd v2.3.6 (the versions go.mod pins) and
// checked by the tests below:
//
//   - xattrs: BuildKit writes every layer it creates through containerd's
//     archive.ChangeWriter (util/overlay/overlay_linux.go WriteUpperdir for
//     overlayfs, the walking differ otherwise), and ChangeWriter.HandleChange
//     (containerd pkg/archive/tar.go) copies exactly one xattr into the tar:
//     security.capability. user.* and trusted.* xattrs set by a RUN are
//     dropped. So TestBlocksXattrRun covers what a RUN can produce
//     (security.capability), and TestBlocksXattrBaseLayer covers user.*
//     xattrs in a layer written by GNU tar, pushed with skopeo, which
//     buildkitd builds FROM and carries into its output unchanged.
//   - opaque dirs: overlay.Changes (util/overlay/overlay_linux.go) turns a
//     directory marked trusted.overlay.opaque=y in the upperdir into a walk of
//     fs.Changes over it, i.e. one Delete per file of the lower dir, and
//     HandleChange writes a Delete as ".wh.<name>"; containerd's archive only
//     reads ".wh..wh..opq" (applier), never writes it. BuildKit never emits an
//     opaque marker. TestBlocksOpaqueDir therefore makes the marker with GNU
//     tar, pushes the image with skopeo, builds FROM it with buildkitd and
//     round-trips both the pushed image (docker://) and buildkitd's output.

// xaHeaders reads every tar header of a gzip or plain tar layer blob, by
// entry name.
func xaHeaders(t testing.TB, p string) map[string]*tar.Header {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if zr, err := gzip.NewReader(f); err == nil {
		defer zr.Close()
		r = zr
	} else if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	out := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out[strings.TrimPrefix(h.Name, "./")] = h
	}
}

// xaLayoutLayers returns the layer blob paths of the image tagged ref in the
// OCI layout dir (or of its only image when ref is empty).
func xaLayoutLayers(t testing.TB, dir, ref string) []string {
	t.Helper()
	var idx ocispec.Index
	readJSONT(t, filepath.Join(dir, "index.json"), &idx)
	for _, d := range idx.Manifests {
		if ref != "" && d.Annotations[ocispec.AnnotationRefName] != ref {
			continue
		}
		var m ocispec.Manifest
		readJSONT(t, filepath.Join(dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()), &m)
		var out []string
		for _, l := range m.Layers {
			out = append(out, filepath.Join(dir, "blobs", l.Digest.Algorithm().String(), l.Digest.Encoded()))
		}
		return out
	}
	t.Fatalf("%s: no image tagged %q", dir, ref)
	return nil
}

// xaFindEntry returns the first layer (index and headers) holding name.
func xaFindEntry(t testing.TB, layers []string, name string) (int, *tar.Header) {
	t.Helper()
	for i, l := range layers {
		if h := xaHeaders(t, l)[name]; h != nil {
			return i, h
		}
	}
	return -1, nil
}

// xaGNUTarImage pushes to the harness registry, as ref, the busybox base
// image plus one layer per directory in layerDirs, each layer written by GNU
// tar (POSIX format, user.* xattrs kept) and appended verbatim by
// `umoci raw add-layer`; skopeo moves the image in and out of the registry.
// Nothing of blockfile or BuildKit writes these layers.
func xaGNUTarImage(t *testing.T, env *harness.Env, ref string, layerDirs ...string) {
	t.Helper()
	reg := env.Registry(t)
	layout := filepath.Join(t.TempDir(), "layout")
	cmdOut(t, exec.Command("skopeo", "copy", "--insecure-policy", "--src-tls-verify=false",
		"docker://"+env.BaseImage(t), "oci:"+layout+":img"))
	for i, dir := range layerDirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"--format=posix", "--xattrs", "--xattrs-include=user.*",
			"--numeric-owner", "--owner=0", "--group=0", "--sort=name",
			"-C", dir, "-cf", filepath.Join(t.TempDir(), "layer.tar")}
		layerTar := args[len(args)-1]
		for _, e := range ents {
			args = append(args, e.Name())
		}
		cmdOut(t, exec.Command("tar", args...))
		cmdOut(t, exec.Command("umoci", "raw", "add-layer", "--image", layout+":img",
			"--history.created_by", "GNU tar layer "+string(rune('A'+i)), layerTar))
	}
	cmdOut(t, exec.Command("skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false",
		"oci:"+layout+":img", "docker://"+reg+"/"+ref))
}

// xaRoundTrip exports src into a fresh store and hydrates it to an OCI
// layout; it fails t unless hydrate prints and writes exactly the standard
// digest and the standard config is the source's. It returns the layout
// directory (image tagged "rt") and the export result's first manifest's
// layers.
func xaRoundTrip(t *testing.T, bin, src, srcConfig, name string) (string, []string) {
	t.Helper()
	storeDir := filepath.Join(t.TempDir(), "store")
	res := bfExport(t, bin, storeDir, src, name)
	img := res.Manifests[0]
	var std ocispec.Manifest
	readJSONT(t, filepath.Join(storeDir, "blobs", "sha256", img.Standard.Digest.Encoded()), &std)
	if srcConfig != "" && std.Config.Digest.String() != srcConfig {
		t.Errorf("standard config %s, source config %s: must be unchanged", std.Config.Digest, srcConfig)
	}
	layout := filepath.Join(t.TempDir(), "hydrated")
	if got := bfHydrate(t, bin, storeDir, name, "oci:"+layout+":rt"); got != res.Standard.Digest.String() {
		t.Fatalf("hydrate printed %s, want %s", got, res.Standard.Digest)
	}
	if d := rootDigest(t, "oci:"+layout+":rt"); d != res.Standard.Digest {
		t.Fatalf("hydrated layout holds %s, want %s", d, res.Standard.Digest)
	}
	var blocks []string
	for i, l := range img.Layers {
		blocks = append(blocks, "")
		if l.Blocks > 0 {
			blocks[i] = l.Source.Digest.String()
		}
	}
	t.Logf("%s: standard %s, %d blocks (%d bytes)", src, res.Standard.Digest, res.Blocks, res.BlockBytes)
	return layout, blocks
}

// xaSourceLayers extracts an oci-archive and returns its layer blob paths
// and its config digest.
func xaSourceLayers(t testing.TB, archive string) ([]string, string) {
	t.Helper()
	dir, descs := archiveLayers(t, archive)
	var idx ocispec.Index
	readJSONT(t, filepath.Join(dir, "index.json"), &idx)
	var m ocispec.Manifest
	readJSONT(t, filepath.Join(dir, "blobs", "sha256", idx.Manifests[0].Digest.Encoded()), &m)
	var out []string
	for _, l := range descs {
		out = append(out, filepath.Join(dir, "blobs", "sha256", l.Digest.Encoded()))
	}
	return out, m.Config.Digest.String()
}

// xaUnpack runs `umoci unpack` on the image tagged rt in layout and returns
// the rootfs.
func xaUnpack(t testing.TB, layout string) string {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "bundle")
	cmdOut(t, exec.Command("umoci", "unpack", "--image", layout+":rt", bundle))
	return filepath.Join(bundle, "rootfs")
}

func xaGetxattr(p, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// xaSetxattrBin builds integration/cmd/setxattr statically into dir.
func xaSetxattrBin(t testing.TB, env *harness.Env, dir string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "setxattr"), "./integration/cmd/setxattr")
	cmd.Dir = env.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmdOut(t, cmd)
}

// capNetBindService is a VFS_CAP_REVISION_2 security.capability value
// (effective, permitted CAP_NET_BIND_SERVICE), as setcap writes it.
const capNetBindService = "0100000200040000000000000000000000000000"

// TestBlocksXattrRun: an image whose last layer buildkitd wrote from a RUN
// that set security.capability (the xattr BuildKit's differ carries into a
// layer) on a 70000-byte file that becomes a block and on a small file. The
// source layer really carries SCHILY.xattr.security.capability for both;
// export + hydrate gives the identical manifest digest; the hydrated layer
// still carries the records, and umoci unpack sets the xattr on the files.
func TestBlocksXattrRun(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)

	dir := t.TempDir()
	xaSetxattrBin(t, env, dir)
	bigData := randBytes(31, 70000)
	putFile(t, filepath.Join(dir, "rootfs/x/big.bin"), bigData)
	putFile(t, filepath.Join(dir, "rootfs/x/small.txt"), []byte("small\n"))
	// user.* is set too, to log what BuildKit does with it (it drops it).
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte(`FROM `+env.BaseImage(t)+`
COPY setxattr /usr/local/bin/setxattr
COPY rootfs/ /
RUN setxattr security.capability 0x`+capNetBindService+` /x/big.bin /x/small.txt && setxattr user.blockfile.note run /x/big.bin /x/small.txt && mkdir /x/dir && setxattr user.blockfile.dir run /x/dir
`))
	const name = "example.test/blocks/xattr-run:1"
	archive := buildOCIArchive(t, env, dir, name)
	layers, cfg := xaSourceLayers(t, archive)

	const capKey = "SCHILY.xattr.security.capability"
	wantCap, _ := hex.DecodeString(capNetBindService)
	last := layers[len(layers)-1]
	srcHdrs := xaHeaders(t, last)
	for _, p := range []string{"x/big.bin", "x/small.txt"} {
		h := srcHdrs[p]
		if h == nil {
			t.Fatalf("source RUN layer has no %s; entries: %v", p, xaNames(srcHdrs))
		}
		if got := h.PAXRecords[capKey]; got != string(wantCap) {
			t.Fatalf("source RUN layer: %s has %s %x, want %s (records %v)", p, capKey, got, capNetBindService, h.PAXRecords)
		}
	}
	// Not asserted (it is BuildKit's behaviour, not ours), logged: the user.*
	// xattrs the RUN set do not reach the layer.
	for _, p := range []string{"x/big.bin", "x/dir/"} {
		if h := srcHdrs[p]; h != nil {
			t.Logf("BuildKit wrote %s with PAX records %q", p, h.PAXRecords)
		}
	}

	layout, blockLayers := xaRoundTrip(t, bin, "oci-archive:"+archive, cfg, name)
	if blockLayers[len(layers)-1] == "" {
		t.Errorf("the RUN layer has no block; x/big.bin (%d bytes) should be one", len(bigData))
	}

	// The hydrated layer is byte-identical (same digest) and so carries the
	// records; read it anyway, through the hydrated layout.
	hyd := xaLayoutLayers(t, layout, "rt")
	hydHdrs := xaHeaders(t, hyd[len(hyd)-1])
	for _, p := range []string{"x/big.bin", "x/small.txt"} {
		if h := hydHdrs[p]; h == nil || h.PAXRecords[capKey] != string(wantCap) {
			t.Errorf("hydrated layer: %s lost %s (header %+v)", p, capKey, h)
		}
	}

	rootfs := xaUnpack(t, layout)
	for _, p := range []string{"x/big.bin", "x/small.txt"} {
		got, err := xaGetxattr(filepath.Join(rootfs, p), "security.capability")
		if err != nil || got != string(wantCap) {
			t.Errorf("umoci unpack: %s security.capability = %x, %v; want %s", p, got, err, capNetBindService)
		}
	}
	if data, err := os.ReadFile(filepath.Join(rootfs, "x/big.bin")); err != nil || sha256Hex(data) != sha256Hex(bigData) {
		t.Errorf("umoci unpack: x/big.bin does not hold its bytes (%v)", err)
	}
}

// TestBlocksXattrBaseLayer: user.* xattrs on a 70000-byte file (a block), a
// small file and a directory, in a layer written by GNU tar and pushed with
// skopeo; buildkitd builds FROM that image (adding a RUN layer) and carries
// the layer into its output. The source layer really carries the
// SCHILY.xattr.user.* records; export + hydrate of buildkitd's output gives
// the identical manifest digest, the hydrated layer keeps the records, and
// umoci unpack of the hydrated image sets the xattrs.
func TestBlocksXattrBaseLayer(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)

	bigData := randBytes(32, 70000)
	lay := t.TempDir()
	putFile(t, filepath.Join(lay, "xa/big.bin"), bigData)
	putFile(t, filepath.Join(lay, "xa/small.txt"), []byte("small\n"))
	if err := os.MkdirAll(filepath.Join(lay, "xa/dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"xa/big.bin": "big", "xa/small.txt": "small", "xa/dir": "dir"}
	for p, v := range want {
		if err := unix.Lsetxattr(filepath.Join(lay, p), "user.blockfile.test", []byte(v), 0); err != nil {
			t.Fatalf("the host filesystem refuses user xattrs (%s): %v", p, err)
		}
	}
	base := "blockfile-it/xattr-base:1"
	xaGNUTarImage(t, env, base, lay)

	dir := t.TempDir()
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte(`FROM `+env.Registry(t)+`/`+base+`
RUN cat /xa/small.txt > /xa-seen
`))
	const name = "example.test/blocks/xattr-base:1"
	archive := buildOCIArchive(t, env, dir, name)
	layers, cfg := xaSourceLayers(t, archive)

	i, _ := xaFindEntry(t, layers, "xa/big.bin")
	if i < 0 {
		t.Fatalf("no layer of buildkitd's output holds xa/big.bin")
	}
	check := func(where string, hdrs map[string]*tar.Header) {
		t.Helper()
		for p, v := range want {
			h := hdrs[p]
			if h == nil {
				h = hdrs[p+"/"]
			}
			if h == nil || h.PAXRecords["SCHILY.xattr.user.blockfile.test"] != v {
				t.Fatalf("%s: %s lacks SCHILY.xattr.user.blockfile.test=%q (header %+v)", where, p, v, h)
			}
		}
	}
	check("source layer", xaHeaders(t, layers[i]))

	layout, blockLayers := xaRoundTrip(t, bin, "oci-archive:"+archive, cfg, name)
	if blockLayers[i] == "" {
		t.Errorf("the GNU tar layer has no block; xa/big.bin (%d bytes) should be one", len(bigData))
	}
	check("hydrated layer", xaHeaders(t, xaLayoutLayers(t, layout, "rt")[i]))

	rootfs := xaUnpack(t, layout)
	for p, v := range want {
		if got, err := xaGetxattr(filepath.Join(rootfs, p), "user.blockfile.test"); err != nil || got != v {
			t.Errorf("umoci unpack: %s user.blockfile.test = %q, %v; want %q", p, got, err, v)
		}
	}
	if data, err := os.ReadFile(filepath.Join(rootfs, "xa/big.bin")); err != nil || sha256Hex(data) != sha256Hex(bigData) {
		t.Errorf("umoci unpack: xa/big.bin does not hold its bytes (%v)", err)
	}
}

// TestBlocksOpaqueDir: an image whose second GNU tar layer makes /data
// opaque (".wh..wh..opq") over a first layer holding a 70000-byte block
// file, a small file and a subdirectory, pushed with skopeo. buildkitd builds
// FROM it (its RUN sees the opaque dir applied) and adds a layer that removes
// and re-creates another dir, which BuildKit writes as per-file whiteouts.
// The opaque marker is really in the source layers; export + hydrate of both
// the pushed image (docker://) and buildkitd's output give the identical
// manifest digest; umoci unpack of the hydrated image applies the opaque dir
// (the lower files are gone, the new one is there).
func TestBlocksOpaqueDir(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	bin := env.BlockfileBin(t)
	reg := env.Registry(t)

	bigData := randBytes(33, 70000)
	lower, upper := t.TempDir(), t.TempDir()
	putFile(t, filepath.Join(lower, "data/big.bin"), bigData)
	putFile(t, filepath.Join(lower, "data/b.txt"), []byte("b\n"))
	putFile(t, filepath.Join(lower, "data/sub/c.txt"), []byte("c\n"))
	putFile(t, filepath.Join(lower, "other/x"), []byte("x\n"))
	putFile(t, filepath.Join(lower, "other/y"), []byte("y\n"))
	putFile(t, filepath.Join(upper, "data/.wh..wh..opq"), nil)
	putFile(t, filepath.Join(upper, "data/new.txt"), []byte("new\n"))
	base := "blockfile-it/opaque-base:1"
	xaGNUTarImage(t, env, base, lower, upper)

	dir := t.TempDir()
	putFile(t, filepath.Join(dir, "Dockerfile"), []byte(`FROM `+reg+`/`+base+`
RUN test ! -e /data/b.txt && test ! -e /data/big.bin && test ! -e /data/sub && cat /data/new.txt > /seen
RUN rm -rf /other && mkdir /other && echo z > /other/z
`))
	const name = "example.test/blocks/opaque:1"
	archive := buildOCIArchive(t, env, dir, name)
	layers, cfg := xaSourceLayers(t, archive)

	iBig, _ := xaFindEntry(t, layers, "data/big.bin")
	iOpq, h := xaFindEntry(t, layers, "data/.wh..wh..opq")
	if iBig < 0 || iOpq < 0 || iOpq <= iBig || h.Typeflag != tar.TypeReg {
		t.Fatalf("buildkitd's output: data/big.bin in layer %d, data/.wh..wh..opq in layer %d (%+v): want the marker in a later layer", iBig, iOpq, h)
	}
	// What BuildKit itself wrote for `rm -rf /other && mkdir /other`.
	lastHdrs := xaHeaders(t, layers[len(layers)-1])
	t.Logf("BuildKit's layer for rm -rf + mkdir of a lower dir: %v", xaNames(lastHdrs))
	if lastHdrs["other/.wh..wh..opq"] != nil {
		t.Logf("BuildKit emitted an opaque marker itself (not expected from v0.33.1's differ)")
	}

	for _, src := range []struct{ ref, config string }{
		{"docker://" + reg + "/" + base, ""},
		{"oci-archive:" + archive, cfg},
	} {
		layout, blockLayers := xaRoundTrip(t, bin, src.ref, src.config, name)
		hyd := xaLayoutLayers(t, layout, "rt")
		// buildkitd's output starts with the pushed image's layers, so the
		// indices hold for both.
		if blockLayers[iBig] == "" {
			t.Errorf("%s: the layer with data/big.bin has no block", src.ref)
		}
		if xaHeaders(t, hyd[iOpq])["data/.wh..wh..opq"] == nil {
			t.Errorf("%s: hydrated layer %d lost data/.wh..wh..opq", src.ref, iOpq)
		}
		rootfs := xaUnpack(t, layout)
		for _, gone := range []string{"data/big.bin", "data/b.txt", "data/sub", "data/.wh..wh..opq"} {
			if _, err := os.Lstat(filepath.Join(rootfs, gone)); err == nil {
				t.Errorf("%s: umoci unpack: %s exists under the opaque /data", src.ref, gone)
			}
		}
		if data, err := os.ReadFile(filepath.Join(rootfs, "data/new.txt")); err != nil || string(data) != "new\n" {
			t.Errorf("%s: umoci unpack: data/new.txt = %q, %v", src.ref, data, err)
		}
		if src.config != "" {
			if data, err := os.ReadFile(filepath.Join(rootfs, "seen")); err != nil || string(data) != "new\n" {
				t.Errorf("%s: umoci unpack: /seen = %q, %v", src.ref, data, err)
			}
			ents, _ := os.ReadDir(filepath.Join(rootfs, "other"))
			if len(ents) != 1 || ents[0].Name() != "z" {
				t.Errorf("%s: umoci unpack: /other holds %v, want only z", src.ref, ents)
			}
		}
	}
}

func xaNames(m map[string]*tar.Header) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
