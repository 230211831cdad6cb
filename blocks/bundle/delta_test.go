package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/delta"
	"github.com/blockfile/blockfile/blocks/image"

	"github.com/blockfile/blockfile/blocks/store"
)

// rebuilt returns b changed the way a rebuild changes a binary: a few
// hundred bytes inserted near the start (everything after moves) and one
// 8-byte word in 64 shifted by a constant (pointers relinked).
func rebuilt(b []byte, version string) []byte {
	out := append([]byte{}, b[:len(b)/5]...)
	out = append(out, jar("inserted "+version, 300)...)
	rest := append([]byte{}, b[len(b)/5:]...)
	for i := 0; i+8 <= len(rest); i += 64 {
		binary.LittleEndian.PutUint64(rest[i:], binary.LittleEndian.Uint64(rest[i:])+uint64(len(version))*0x1000)
	}
	return append(out, rest...)
}

// deltaLayers: a binary rebuilt at the same path, a versioned jar renamed
// with its version, a jar renamed otherwise, and a file that is new.
func deltaLayers(version string) []map[string][]byte {
	bin := jar("libjvm", 300000)
	lib := jar("libfoo", 120000)
	shaded := jar("netty", 100000)
	if version != "v1" {
		bin, lib, shaded = rebuilt(bin, version), rebuilt(lib, version), rebuilt(shaded, version)
	}
	libName := map[string]string{"v1": "libfoo-1.2.jar", "v2": "libfoo-1.3.jar"}[version]
	shadedName := map[string]string{"v1": "netty-all.jar", "v2": "netty-shaded.jar"}[version]
	return []map[string][]byte{
		{"etc/os-release": []byte("ID=test\n")},
		{
			"usr/lib/jvm/lib/server/libjvm.so": bin,
			"app/libs/" + libName:              lib,
			"app/libs/" + shadedName:           shaded,
			"app/libs/unrelated.jar":           jar("unrelated "+version, 70000),
		},
	}
}

type deltaFixture struct {
	src, site *store.Store
	dir       string
	v2std     digest.Digest
}

func newDeltaFixture(t *testing.T, layers func(string) []map[string][]byte) *deltaFixture {
	ctx := context.Background()
	f := &deltaFixture{src: openStore(t), site: openStore(t), dir: t.TempDir()}
	export(t, f.src, "app:v1", layers("v1"))
	f.v2std = export(t, f.src, "app:v2", layers("v2")).Standard.Digest
	full := filepath.Join(f.dir, "v1.bundle")
	if _, err := Create(ctx, f.src, []string{"app:v1"}, full, CreateOptions{Full: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ctx, f.site, full, ApplyOptions{NoMaterialize: true}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *deltaFixture) create(t *testing.T, name string, opts CreateOptions) (*Header, string) {
	t.Helper()
	opts.From = []string{"app:v1"}
	p := filepath.Join(f.dir, name)
	h, err := Create(context.Background(), f.src, []string{"app:v2"}, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// TestDeltaShipsTheDifference: a rebuilt binary, a renamed versioned jar
// and a jar renamed otherwise travel as deltas against the blocks the site
// holds (at the same path, at the same path without version, by content),
// the new jar whole; apply rebuilds the exact standard image.
func TestDeltaShipsTheDifference(t *testing.T) {
	ctx := context.Background()
	f := newDeltaFixture(t, deltaLayers)
	whole, wholePath := f.create(t, "whole.bundle", CreateOptions{NoDeltas: true})
	h, p := f.create(t, "delta.bundle", CreateOptions{})
	for _, b := range whole.Blobs {
		if b.Patch != nil && b.Patch.Encoding == PatchDeltaMember {
			t.Fatalf("--no-deltas bundle carries a delta: %+v", b.Patch)
		}
	}
	got := map[string]*Patch{}
	for _, b := range h.Blobs {
		if b.Patch != nil && b.Patch.Encoding == PatchDeltaMember {
			got[b.Patch.Path] = b.Patch
			t.Logf("%s (%d bytes) travels as a %d-byte delta against %s (%s)", b.Patch.Path, b.Size, b.Patch.Size, b.Patch.BasePath, b.Patch.BaseChoice)
			if !deltaWorth(b.Patch.Size, b.Size) {
				t.Errorf("%s: delta of %d bytes for a %d-byte member", b.Patch.Path, b.Patch.Size, b.Size)
			}
		}
	}
	want := map[string][2]string{
		"usr/lib/jvm/lib/server/libjvm.so": {"usr/lib/jvm/lib/server/libjvm.so", "same path"},
		"app/libs/libfoo-1.3.jar":          {"app/libs/libfoo-1.2.jar", "same name without version"},
		"app/libs/netty-shaded.jar":        {"app/libs/netty-all.jar", "similar content"},
	}
	for path, w := range want {
		p := got[path]
		if p == nil {
			t.Errorf("%s does not travel as a delta", path)
			continue
		}
		if p.BasePath != w[0] || p.BaseChoice != w[1] {
			t.Errorf("%s: base %s (%s), want %s (%s)", path, p.BasePath, p.BaseChoice, w[0], w[1])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d deltas, want %d (the new jar has no base)", len(got), len(want))
	}
	if a, b := fileSize(t, p), fileSize(t, wholePath); a*3 > b {
		t.Errorf("bundle with deltas %d bytes, without %d", a, b)
	}
	res, err := Apply(ctx, f.site, p, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Images[0].Standard.Digest; got != f.v2std {
		t.Fatalf("applied %s, built %s", got, f.v2std)
	}
	if err := f.site.Verify(ctx, func(p store.Problem) { t.Errorf("verify: %+v", p) }); err != nil {
		t.Fatal(err)
	}
}

// TestDeltaDamagedOrBaseMissing: a delta that does not rebuild its block,
// or whose base the site lacks, fails apply before anything is written.
func TestDeltaDamagedOrBaseMissing(t *testing.T) {
	ctx := context.Background()
	f := newDeltaFixture(t, deltaLayers)
	h, p := f.create(t, "delta.bundle", CreateOptions{})
	var d *Blob
	for i, b := range h.Blobs {
		if b.Patch != nil && b.Patch.Encoding == PatchDeltaMember {
			d = &h.Blobs[i]
		}
	}
	if d == nil {
		t.Fatal("no delta in the bundle")
	}
	// Deltas that are well-formed patches (their digests match) but lie:
	// one rebuilds other bytes than the block, one declares a target
	// beyond the limit. Both fail before anything is written.
	base, err := inflateMember(ctx, f.site, d.Patch.Base)
	if err != nil {
		t.Fatal(err)
	}
	other := append(append([]byte{}, base...), "something else"...)
	var lie bytes.Buffer
	if err := delta.Encode(ctx, &lie, base, other); err != nil {
		t.Fatal(err)
	}
	huge := []byte(delta.Magic)
	huge = binary.AppendUvarint(huge, uint64(len(base)))
	huge = binary.AppendUvarint(huge, 1<<40)
	huge = append(huge, make([]byte, 32)...)
	// The crafted bundles are written from the source store: give it the
	// patch entries of the real one.
	pushEntries(t, f.src, p)
	for name, body := range map[string][]byte{"another target": lie.Bytes(), "huge target": huge} {
		pd := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(body), Size: int64(len(body))}
		if err := f.src.Push(ctx, pd, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		crafted := *h
		crafted.Blobs = append([]Blob{}, h.Blobs...)
		for i, b := range crafted.Blobs {
			if b.Digest == d.Digest {
				p := *b.Patch
				p.Digest, p.Size = pd.Digest, pd.Size
				crafted.Blobs[i].Patch = &p
			}
		}
		crafted.Patched = patched(crafted.Blobs)
		err := applyMustFail(t, f.site, writeHeader(t, f.src, &crafted))
		t.Logf("%s: %v", name, err)
		if !strings.Contains(err.Error(), d.Digest.String()) {
			t.Errorf("%s: error does not name the block %s: %v", name, d.Digest, err)
		}
	}

	// The base is gone: apply names it and writes nothing.
	t.Logf("removing delta base %s", d.Patch.Base.Digest)
	if err := os.Remove(f.site.BlobPath(d.Patch.Base.Digest)); err != nil {
		t.Fatal(err)
	}
	before := listing(t, f.site.Root())
	_, err = Apply(ctx, f.site, p, ApplyOptions{})
	var miss *MissingError
	if !errors.As(err, &miss) {
		t.Fatalf("apply without the delta base: %v", err)
	}
	found := false
	for _, m := range miss.Missing {
		found = found || m.Digest == d.Patch.Base.Digest
	}
	if !found {
		t.Errorf("the missing base %s is not listed: %v", d.Patch.Base.Digest, err)
	}
	if after := listing(t, f.site.Root()); after != before {
		t.Error("a failed apply changed the store")
	}
}

// everyFileChanges: a layer of twenty blocks, every one rebuilt (a
// security rebuild relinking every binary of a package), plus small files.
func everyFileChanges(version string) []map[string][]byte {
	files := map[string][]byte{}
	for i := range 20 {
		b := jar(fmt.Sprintf("bin%d", i), 40000+i*1000)
		if version != "v1" {
			b = rebuilt(b, version)
		}
		files[fmt.Sprintf("usr/bin/tool%02d", i)] = b
		files[fmt.Sprintf("usr/share/doc/tool%02d/changelog", i)] = []byte("tool " + version + "\n")
	}
	return []map[string][]byte{{"etc/os-release": []byte("ID=test\n")}, files}
}

// TestDeltaNeverWorseThanTheLayer: when every file of a layer changes a
// little, the bundle carries less than the changed standard layer whole
// plus 64 KiB (the rule of docs/BUNDLES.md), with and without deltas
// (without, it carries every block whole: the layer's bytes plus metadata).
func TestDeltaNeverWorseThanTheLayer(t *testing.T) {
	ctx := context.Background()
	f := newDeltaFixture(t, everyFileChanges)
	v1, err := imageLayers(ctx, f.src, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := imageLayers(ctx, f.src, "app:v2")
	if err != nil {
		t.Fatal(err)
	}
	var changed int64
	for d, size := range v2 {
		if _, ok := v1[d]; !ok {
			changed += size
		}
	}
	_, p := f.create(t, "delta.bundle", CreateOptions{})
	_, w := f.create(t, "whole.bundle", CreateOptions{NoDeltas: true})
	t.Logf("changed standard layers %d bytes; bundle %d bytes with deltas, %d without", changed, fileSize(t, p), fileSize(t, w))
	if got := fileSize(t, p); got > changed+64<<10 {
		t.Errorf("bundle %d bytes, the changed layers whole %d (+64 KiB)", got, changed)
	}
	if got := fileSize(t, p); got*4 > changed {
		t.Errorf("bundle %d bytes for layers of %d where every file changed a little: deltas do not pay", got, changed)
	}
	res, err := Apply(ctx, f.site, p, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Images[0].Standard.Digest != f.v2std {
		t.Fatalf("applied %s, built %s", res.Images[0].Standard.Digest, f.v2std)
	}
}

// imageLayers returns the standard layers of the image name, by digest.
func imageLayers(ctx context.Context, s *store.Store, name string) (map[digest.Digest]int64, error) {
	img, err := image.Resolve(ctx, s, name)
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest]int64{}
	for _, m := range img.Manifests {
		for _, l := range m.Layers {
			out[l.Standard.Digest] = l.Standard.Size
		}
	}
	return out, nil
}

// pushEntries pushes the blob entries of the bundle at path into s.
func pushEntries(t *testing.T, s *store.Store, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		th, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if th.Typeflag != tar.TypeReg || !strings.HasPrefix(th.Name, blobDir) {
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		d := ocispec.Descriptor{Digest: digest.FromBytes(body), Size: int64(len(body))}
		if err := s.Push(context.Background(), d, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
}
