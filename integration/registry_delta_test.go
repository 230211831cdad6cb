package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/integration/harness"
)

// deltaImages are two releases of an image in which files changed a little
// (a JDK-like lib/modules rebuilt, one class of an app jar): the upgrade's
// bundle carries them as binary deltas, much smaller than the blocks.
type deltaImages struct {
	src    string
	v1, v2 *image.ExportResult
}

var (
	deltaOnce sync.Once
	deltaImg  *deltaImages
)

func getDeltaImages(t *testing.T) *deltaImages {
	t.Helper()
	deltaOnce.Do(func() {
		env := harness.Get(t)
		bin := env.BlockfileBin(t)
		dir, err := os.MkdirTemp(env.Dir, "delta-images-")
		if err != nil {
			t.Fatal(err)
		}
		modules := modulesLike(11, 6<<20)
		jar := randBytes(12, 400<<10)
		jar2 := append([]byte{}, jar...)
		copy(jar2[200<<10:], randBytes(13, 4<<10))
		names := []string{"app/app.jar", "app/release", "usr/lib/jvm/lib/modules"}
		d := &deltaImages{src: filepath.Join(dir, "store")}
		for i, files := range []map[string][]byte{
			{names[0]: jar, names[1]: []byte("VERSION=1\n"), names[2]: modules},
			{names[0]: jar2, names[1]: []byte("VERSION=2\n"), names[2]: rebuiltFile(modules)},
		} {
			layout := filepath.Join(dir, "layout", string(rune('1'+i)))
			writeFilesLayout(t, layout, files, names)
			res := bfExport(t, bin, d.src, "oci:"+layout, "example.test/delta/app:"+string(rune('1'+i)))
			if i == 0 {
				d.v1 = res
			} else {
				d.v2 = res
			}
		}
		deltaImg = d
	})
	if deltaImg == nil {
		t.Fatal("delta images: an earlier test failed to build them")
	}
	return deltaImg
}

// TestRegistryUpgradeWithinBundle (issue 9, point 3): with push
// --delta-from, a pull of v2 into a store holding v1 downloads at most 1.5x
// the v1 -> v2 bundle + 256 KiB (counted by a proxy in front of a real
// registry) and yields v2's exact digests, for the bundle test images and
// for images whose files changed a little (where blocks alone are far over
// the bound). The delta is invisible to old clients, is not pushed twice,
// and a repository without a delta still pulls through blocks.
func TestRegistryUpgradeWithinBundle(t *testing.T) {
	harness.RequireIntegration(t)
	bin := harness.Get(t).BlockfileBin(t)
	b := getBundleImages(t)
	d := getDeltaImages(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	for _, c := range []struct {
		label  string
		src    string
		v1, v2 *image.ExportResult
		// deltas: the blocks alone are over the bound (files changed a little)
		deltas bool
	}{
		{"bundle-images", b.src, b.v1, b.v2, false},
		{"changed-a-little", d.src, d.v1, d.v2, true},
	} {
		t.Run(c.label, func(t *testing.T) {
			src := copyStore(t, c.src)
			ref1, ref2 := px.addr+"/"+c.label+"/app:v1", px.addr+"/"+c.label+"/app:v2"
			bfPush(t, bin, src, c.v1.Name, ref1)
			p2 := bfPush(t, bin, src, c.v2.Name, ref2, "--delta-from", c.v1.Name)
			if p2.Index.Digest != c.v2.Index.Digest {
				t.Fatalf("push --delta-from changed the index: %s, want %s", p2.Index.Digest, c.v2.Index.Digest)
			}
			up := filepath.Join(t.TempDir(), "up.bundle")
			bfMust(t, bin, "bundle", "create", "--store", c.src, "--progress", "none", "--from", c.v1.Name, c.v2.Name, "-o", up)
			data, err := os.ReadFile(up)
			if err != nil {
				t.Fatal(err)
			}
			if len(p2.Deltas) != 1 || p2.Deltas[0].Present || p2.Deltas[0].BaseIndex.Digest != c.v1.Index.Digest {
				t.Fatalf("push --delta-from reported deltas %+v", p2.Deltas)
			}
			// The published bundle is bundle create --from's, byte for byte.
			if got := p2.Deltas[0].Bundle; got.Digest != digest.FromBytes(data) || got.Size != int64(len(data)) {
				t.Errorf("published bundle %s (%d bytes), bundle create made %s (%d bytes)", got.Digest, got.Size, digest.FromBytes(data), len(data))
			}
			// Pushing again finds it and uploads nothing.
			again := bfPush(t, bin, src, c.v2.Name, ref2, "--delta-from", c.v1.Name)
			if len(again.Deltas) != 1 || !again.Deltas[0].Present || again.Deltas[0].Manifest.Digest != p2.Deltas[0].Manifest.Digest || again.Uploaded.Blobs != 0 {
				t.Errorf("second push: deltas %+v, uploaded %d blobs", again.Deltas, again.Uploaded.Blobs)
			}
			// Old clients see the image as before.
			if got := skopeoDigest(t, ref2, false); got != c.v2.Standard.Digest.String() {
				t.Errorf("skopeo copy: %s, want the standard manifest %s", got, c.v2.Standard.Digest)
			}
			if got := skopeoDigest(t, ref2, true); got != c.v2.Index.Digest.String() {
				t.Errorf("skopeo copy --all: %s, want the index %s", got, c.v2.Index.Digest)
			}

			site := filepath.Join(t.TempDir(), "site")
			bfPull(t, bin, site, ref1)
			noDelta := copyStore(t, site)
			px.reset()
			out := filepath.Join(t.TempDir(), "v2.tar")
			r2 := bfPull(t, bin, site, ref2, "--output", "oci-archive:"+out)
			down := px.down.Load()
			limit := 1.5*float64(len(data)) + 256<<10
			t.Logf("upgrade pull with the delta: %d bytes on the wire (pull counted %d), bundle %d, limit %.0f", down, r2.Downloaded.Bytes, len(data), limit)
			// The pull takes the delta when it is smaller than the blobs it
			// replaces (random jars: the blocks are as small as the bundle).
			if c.deltas && (r2.Delta == nil || r2.Delta.Bundle.Digest != p2.Deltas[0].Bundle.Digest) {
				t.Fatalf("the pull did not use the delta: %+v", r2.Delta)
			}
			if r2.Delta != nil && r2.Delta.Bundle.Size >= r2.Delta.Instead {
				t.Errorf("the pull used a %d-byte delta in place of %d bytes of blobs", r2.Delta.Bundle.Size, r2.Delta.Instead)
			}
			if float64(down) > limit {
				t.Errorf("upgrade pull downloaded %d bytes, over 1.5x the bundle (%d) + 256 KiB", down, len(data))
			}
			if r2.Standard.Digest != c.v2.Standard.Digest || r2.Index.Digest != c.v2.Index.Digest {
				t.Fatalf("pull v2: standard %s index %s; want %s %s", r2.Standard.Digest, r2.Index.Digest, c.v2.Standard.Digest, c.v2.Index.Digest)
			}
			bfMust(t, bin, "verify", "--store", site)
			raw, err := execCmd("skopeo", "inspect", "--raw", "oci-archive:"+out).Output()
			if err != nil {
				t.Fatalf("skopeo inspect --raw oci-archive:%s: %v", out, err)
			}
			if got := digest.FromBytes(raw); got != c.v2.Standard.Digest {
				t.Errorf("the --output holds manifest %s, want %s", got, c.v2.Standard.Digest)
			}
			// The delta is transport: it is not kept as a referrer.
			if refs, _ := filepath.Glob(filepath.Join(site, "blockfile", "referrers", "*", "*")); len(refs) != 0 {
				t.Errorf("the store recorded referrers: %v", refs)
			}

			// The same upgrade through blocks (--no-deltas).
			px.reset()
			r3 := bfPull(t, bin, noDelta, ref2, "--no-deltas")
			blocksDown := px.down.Load()
			t.Logf("upgrade pull without the delta: %d bytes on the wire", blocksDown)
			if r3.Delta != nil || r3.Standard.Digest != c.v2.Standard.Digest {
				t.Errorf("--no-deltas: delta %+v, standard %s", r3.Delta, r3.Standard.Digest)
			}
			if c.deltas && float64(blocksDown) <= limit {
				t.Errorf("without the delta the pull downloads %d bytes, within the bound %.0f: the fixture does not show what deltas bring", blocksDown, limit)
			}
			bfMust(t, bin, "verify", "--store", noDelta)

			// A repository holding v2 without a delta: the block path.
			plain := px.addr + "/" + c.label + "/nodelta:v2"
			bfPush(t, bin, src, c.v2.Name, plain)
			site2 := filepath.Join(t.TempDir(), "site2")
			bfPull(t, bin, site2, ref1)
			r4 := bfPull(t, bin, site2, plain)
			if r4.Delta != nil || r4.Standard.Digest != c.v2.Standard.Digest {
				t.Errorf("pull without a delta pushed: delta %+v, standard %s", r4.Delta, r4.Standard.Digest)
			}
			bfMust(t, bin, "verify", "--store", site2)
		})
	}
}

// TestRegistryDeltaTampered: a delta bundle served with a byte flipped (a
// proxy), or a delta manifest naming a bundle whose content is wrong but
// whose digest is its own (someone with push rights), fails the pull naming
// the delta, with the store unchanged; --no-deltas then pulls the blocks.
func TestRegistryDeltaTampered(t *testing.T) {
	harness.RequireIntegration(t)
	bin := harness.Get(t).BlockfileBin(t)
	d := getDeltaImages(t)
	reg := startOwnRegistry(t)
	px := startProxy(t, reg.addr)
	src := copyStore(t, d.src)
	ref1, ref2 := px.addr+"/tamper/app:v1", px.addr+"/tamper/app:v2"
	bfPush(t, bin, src, d.v1.Name, ref1)
	p2 := bfPush(t, bin, src, d.v2.Name, ref2, "--delta-from", d.v1.Name)
	if len(p2.Deltas) != 1 {
		t.Fatalf("deltas pushed: %+v", p2.Deltas)
	}
	site := filepath.Join(t.TempDir(), "site")
	bfPull(t, bin, site, ref1)

	check := func(what, ref, want string) {
		t.Helper()
		before := storeListing(t, site)
		out := filepath.Join(t.TempDir(), "v2.tar")
		r := bfRun(t, bin, "pull", "--store", site, "--progress", "none", "--output", "oci-archive:"+out, ref)
		t.Logf("%s: %s", what, strings.TrimSpace(r.stderr))
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 naming %s", what, r.code, r.stderr, want)
		}
		if after := storeListing(t, site); after != before {
			t.Errorf("%s: the store changed:\nbefore:\n%s\nafter:\n%s", what, before, after)
		}
		mustAbsent(t, out)
	}

	// 1. The bundle blob served with a byte flipped.
	bundleDigest := p2.Deltas[0].Bundle.Digest
	px.setTamper(bundleDigest.String())
	check("bundle served tampered", ref2, bundleDigest.String())
	px.setTamper("")

	// 2. A delta whose bundle hashes to its own digest but whose content
	// is not what its header says: published to another repository
	// holding the same images.
	ref3 := px.addr + "/forged/app:v2"
	bfPush(t, bin, src, d.v1.Name, px.addr+"/forged/app:v1")
	bfPush(t, bin, src, d.v2.Name, ref3)
	up := filepath.Join(t.TempDir(), "up.bundle")
	bfMust(t, bin, "bundle", "create", "--store", d.src, "--progress", "none", "--from", d.v1.Name, d.v2.Name, "-o", up)
	data, err := os.ReadFile(up)
	if err != nil {
		t.Fatal(err)
	}
	forged := flipInLargestBlob(t, data)
	manifest := pushForgedDelta(t, ref3, d.v2.Index, d.v1.Index.Digest, forged)
	check("forged bundle", ref3, manifest.String())

	// --no-deltas pulls the blocks.
	if r := bfPull(t, bin, site, ref2, "--no-deltas"); r.Delta != nil || r.Standard.Digest != d.v2.Standard.Digest {
		t.Errorf("--no-deltas after the tampering: delta %+v, standard %s", r.Delta, r.Standard.Digest)
	}
	bfMust(t, bin, "verify", "--store", site)
}

// pushForgedDelta pushes bundle as a delta manifest of subject from base,
// with go-containerregistry (which maintains the referrers fallback tag),
// and returns the manifest's digest.
func pushForgedDelta(t *testing.T, ref string, subject ocispec.Descriptor, base digest.Digest, bundleData []byte) digest.Digest {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, l := range []v1.Layer{static.NewLayer(bundleData, blocks.MediaTypeBundle), static.NewLayer([]byte("{}"), types.MediaType(ocispec.MediaTypeEmptyJSON))} {
		if err := remote.WriteLayer(r.Context(), l, remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	sub := ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"artifactType":  blocks.ArtifactTypeDelta,
		"config":        ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: 2},
		"layers":        []ocispec.Descriptor{{MediaType: blocks.MediaTypeBundle, Digest: digest.FromBytes(bundleData), Size: int64(len(bundleData))}},
		"subject":       sub,
		"annotations":   map[string]string{blocks.AnnotationDeltaBase: base.String()},
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	md := digest.FromBytes(data)
	if err := remote.Put(r.Context().Digest(md.String()), rawTaggable{data}, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	return md
}

type rawTaggable struct{ data []byte }

func (r rawTaggable) RawManifest() ([]byte, error) { return bytes.Clone(r.data), nil }
func (r rawTaggable) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}

// flipInLargestBlob flips a byte in the middle of the largest blob of a
// bundle file's tar.
func flipInLargestBlob(t *testing.T, data []byte) []byte {
	t.Helper()
	rd := bytes.NewReader(data)
	tr := tar.NewReader(rd)
	var at, size int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, "blobs/sha256/") && h.Size > size {
			// The reader stands at the start of the entry's data.
			at, size = int64(len(data))-int64(rd.Len()), h.Size
		}
	}
	if size == 0 {
		t.Fatal("the bundle holds no blob")
	}
	out := append([]byte{}, data...)
	out[at+size/2] ^= 0x40
	return out
}
