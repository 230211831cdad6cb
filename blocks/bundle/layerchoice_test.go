package bundle

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
)

// edited returns b with a few bytes changed at scattered offsets (every
// 997th byte in the first and last tenth, and one byte in the middle): the
// file changed a little everywhere.
func edited(b []byte, version string) []byte {
	out := bytes.Clone(b)
	for i := 0; i < len(out); i += 997 {
		if i < len(out)/10 || i > len(out)*9/10 || i == len(out)/2/997*997 {
			out[i] ^= byte(len(version)) | 1
		}
	}
	return out
}

// gzipped is a compressed file (a .gz, a jar): a small change of what it
// holds changes every byte after it, so no delta helps.
func gzipped(t testing.TB, plain []byte) []byte {
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, 9)
	zw.Write(plain)
	zw.Close()
	return b.Bytes()
}

// words is compressible text of n bytes.
func words(seed string, n int) []byte {
	r := jar(seed, n/4+16)
	w := []string{"alpha ", "beta ", "gamma ", "delta ", "lambda ", "omega ", "java ", "class "}
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString(w[int(r[i%len(r)])%len(w)])
	}
	return b.Bytes()[:n]
}

// everyFileEdited: every file of the image changes a little. Layer 1: many
// small files and several large binaries edited at scattered offsets (their
// deltas are small). Layer 2: many small files and compressed files whose
// content is edited at scattered offsets (no delta helps: the blocked form
// costs more than the standard layer).
func everyFileEdited(t testing.TB) func(string) []map[string][]byte {
	return func(version string) []map[string][]byte {
		bins, gz := map[string][]byte{}, map[string][]byte{}
		for i := range 60 {
			small := words(fmt.Sprint("doc", i), 300+i*20)
			if version != "v1" {
				small = edited(small, version)
			}
			bins[fmt.Sprintf("usr/share/doc/pkg%02d/README", i)] = small
			gz[fmt.Sprintf("usr/share/man/man1/tool%02d.1", i)] = small
		}
		for i := range 6 {
			b := jar(fmt.Sprint("bin", i), 40000+i*7000)
			if version != "v1" {
				b = edited(b, version)
			}
			bins[fmt.Sprintf("usr/bin/tool%d", i)] = b
		}
		for i := range 120 {
			// Sixteen letters at random: Huffman-coded by gzip (about 4
			// bits a byte), so a change shifts every bit after it.
			plain := jar(fmt.Sprint("data", i), 10000+i*40)
			for k := range plain {
				plain[k] = 'a' + plain[k]&15
			}
			if version != "v1" {
				plain = edited(plain, version)
			}
			gz[fmt.Sprintf("usr/share/data/set%02d.gz", i)] = gzipped(t, plain)
		}
		return []map[string][]byte{{"etc/os-release": []byte("ID=test\n")}, bins, gz}
	}
}

// TestNeverWorseThanTheLayerSplit: for every layer an upgrade changes, the
// bundle carries at most what shipping that changed standard layer whole
// costs (plus its tar entry and the margin of layerchoice.go), and the whole
// bundle at most the changed standard layers plus 64 KiB, on an image where
// every file changes a little. The layer where deltas do not pay travels as
// its standard layer; apply derives its blocked form, reproduces the exact
// image, and leaves a store that verifies and takes the next upgrade.
func TestNeverWorseThanTheLayerSplit(t *testing.T) {
	ctx := context.Background()
	f := newDeltaFixture(t, everyFileEdited(t))
	v1, err := image.Resolve(ctx, f.src, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := image.Resolve(ctx, f.src, "app:v2")
	if err != nil {
		t.Fatal(err)
	}
	old := map[digest.Digest]bool{}
	for _, l := range v1.Manifests[0].Layers {
		old[l.Standard.Digest] = true
	}
	for _, opts := range []CreateOptions{{}, {NoDeltas: true}, {NoPatches: true}} {
		name := fmt.Sprintf("deltas=%v,patches=%v", !opts.NoDeltas, !opts.NoPatches)
		h, p := f.create(t, filepath.Base(t.TempDir())+".bundle", opts)
		entries := map[digest.Digest]int64{}
		derivedFrom := map[digest.Digest]bool{}
		for _, b := range h.Blobs {
			entries[b.Digest] = entryCost(b)
			if b.Derive != nil {
				derivedFrom[b.Digest] = true
			}
		}
		var changed int64
		derived := 0
		for _, l := range v2.Manifests[0].Layers {
			if old[l.Standard.Digest] {
				continue
			}
			changed += l.Standard.Size
			// What this layer costs the bundle: its standard layer, or
			// its blocked layer, block set and members.
			if !l.HasBlocks() {
				t.Fatalf("layer %s has no blocks: the test needs blocks in every changed layer", l.Standard.Digest)
			}
			cost := entries[l.Standard.Digest]
			if derivedFrom[l.Standard.Digest] {
				derived++
			} else {
				cost = entries[l.Blocked.Digest]
				if l.BlockSet != nil {
					cost += entries[l.BlockSet.Digest]
				}
				for _, m := range l.Members {
					cost += entries[m.Digest]
				}
			}
			t.Logf("%s: layer %s: standard %d bytes, in the bundle %d", name, l.Standard.Digest, l.Standard.Size, cost)
			if bound := l.Standard.Size + 2048 + switchMargin; cost > bound {
				t.Errorf("%s: layer %s costs %d bytes, more than its standard layer (%d) + entry and margin", name, l.Standard.Digest, cost, l.Standard.Size)
			}
		}
		size := fileSize(t, p)
		t.Logf("%s: bundle %d bytes, changed standard layers %d, %d layer(s) derived", name, size, changed, derived)
		if size > changed+64<<10 {
			t.Errorf("%s: bundle %d bytes, more than the changed standard layers (%d) + 64 KiB", name, size, changed)
		}
		// Without deltas the compressed files' layer costs more blocked
		// than standard (a tar entry per block): it travels standard.
		if (opts.NoDeltas || opts.NoPatches) && derived == 0 {
			t.Errorf("%s: no layer travels as its standard layer", name)
		}
		if want := map[bool]int{false: Version, true: VersionDerive}[derived > 0]; h.Version != want {
			t.Errorf("%s: header version %d with %d derived layers, want %d", name, h.Version, derived, want)
		}

		// Apply at a copy of the site: the exact image, and a store that
		// verifies, with and without materializing.
		for _, noMat := range []bool{false, true} {
			site := openStore(t)
			if _, err := Apply(ctx, site, filepath.Join(f.dir, "v1.bundle"), ApplyOptions{NoMaterialize: true}); err != nil {
				t.Fatal(err)
			}
			res, err := Apply(ctx, site, p, ApplyOptions{NoMaterialize: noMat})
			if err != nil {
				t.Fatalf("%s: apply: %v", name, err)
			}
			if got := res.Images[0].Standard.Digest; got != f.v2std {
				t.Fatalf("%s: applied %s, built %s", name, got, f.v2std)
			}
			if err := site.Verify(ctx, func(p store.Problem) { t.Errorf("%s: verify: %+v", name, p) }); err != nil {
				t.Fatal(err)
			}
			// The blocked form is complete: a bundle made for a site that
			// holds v2 applies (it requires every blob of v2's closure).
			if _, err := Apply(ctx, site, p, ApplyOptions{}); err != nil {
				t.Fatalf("%s: apply again: %v", name, err)
			}
			c, err := Closures(ctx, f.src, []string{"app:v2"})
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range c[0].Blobs {
				if ok, err := site.Exists(ctx, b.Digest); err != nil || !ok {
					t.Errorf("%s: the site lacks %s after apply (%v)", name, b, err)
				}
			}
		}
	}
}
