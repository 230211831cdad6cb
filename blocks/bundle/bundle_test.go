package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
)

// fixture: a source store with v1 and v2, a site that holds v1, and the
// v1 -> v2 bundle.
type fixture struct {
	src, site *store.Store
	bundle    string
	header    *Header
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{src: openStore(t), site: openStore(t)}
	putSynth(t, f.src, "app:v1", synthV1)
	putSynth(t, f.src, "app:v2", synthV2)
	copyClosure(t, f.src, f.site, "app:v1")
	f.bundle = filepath.Join(t.TempDir(), "v2.bundle")
	h, err := Create(context.Background(), f.src, []string{"app:v2"}, f.bundle, CreateOptions{From: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	f.header = h
	return f
}

func TestCreateWritesAnOCILayoutHeaderFirst(t *testing.T) {
	f := newFixture(t)
	data, err := os.ReadFile(f.bundle)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	var names []string
	for {
		th, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, th.Name)
		if strings.HasPrefix(th.Name, blobDir) && th.Name != blobDir {
			// Every blob is stored under its own digest: a plain OCI layout.
			h := digest.SHA256.Digester()
			if _, err := io.Copy(h.Hash(), tr); err != nil {
				t.Fatal(err)
			}
			if got := blobDir + h.Digest().Encoded(); got != th.Name {
				t.Errorf("entry %s holds %s", th.Name, got)
			}
		}
	}
	want := []string{HeaderName, "oci-layout", "index.json", "blobs/", blobDir}
	if len(names) != len(want)+len(f.header.Blobs) || !equalStrings(names[:len(want)], want) {
		t.Fatalf("entries %v", names)
	}
	if f.header.Adds.Blobs != len(f.header.Blobs) || f.header.Requires.Blobs == 0 {
		t.Errorf("header adds %+v requires %+v", f.header.Adds, f.header.Requires)
	}

	// The same plan makes the same bytes.
	again := filepath.Join(t.TempDir(), "again.bundle")
	if _, err := Create(context.Background(), f.src, []string{"app:v2"}, again, CreateOptions{From: []string{"app:v1"}}); err != nil {
		t.Fatal(err)
	}
	if data2, _ := os.ReadFile(again); !bytes.Equal(data, data2) {
		t.Error("two bundles of the same images differ")
	}
	if _, err := os.Stat(again + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temp file left behind: %v", err)
	}
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

func TestCreateNeedsABase(t *testing.T) {
	s := openStore(t)
	putSynth(t, s, "app:v1", synthV1)
	out := filepath.Join(t.TempDir(), "b")
	if _, err := Create(context.Background(), s, []string{"app:v1"}, out, CreateOptions{}); err == nil {
		t.Fatal("a bundle without --from, --have or --full was made")
	}
	h, err := Create(context.Background(), s, []string{"app:v1"}, out, CreateOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if h.Requires.Blobs != 0 {
		t.Errorf("a full bundle requires %v", h.Requires)
	}
}

func TestReaderVerifiesEveryBlob(t *testing.T) {
	f := newFixture(t)
	r, err := Open(f.bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := 0
	for {
		b, rd, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rd); err != nil {
			t.Fatalf("blob %s: %v", b, err)
		}
		n++
	}
	if n != len(f.header.Blobs) {
		t.Fatalf("read %d blobs, header lists %d", n, len(f.header.Blobs))
	}
}

// applyMustFail applies bundle to the site and checks it fails without
// changing a byte of the site's store.
func applyMustFail(t *testing.T, site *store.Store, bundle string) error {
	t.Helper()
	before := listing(t, site.Root())
	_, err := Apply(context.Background(), site, bundle, ApplyOptions{})
	if err == nil {
		t.Fatal("apply succeeded")
	}
	if after := listing(t, site.Root()); after != before {
		t.Errorf("apply changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	return err
}

func TestApplyRefusesMissingPrerequisites(t *testing.T) {
	f := newFixture(t)
	// The site lost two of the blocks v2 still uses.
	ctx := context.Background()
	v1, _ := Closures(ctx, f.src, []string{"app:v1"})
	v2, _ := Closures(ctx, f.src, []string{"app:v2"})
	p, err := MakePlan(v2, BaseOf(v1...))
	if err != nil {
		t.Fatal(err)
	}
	var gone []digest.Digest
	for _, b := range p.Requires {
		if b.Kind == KindBlock {
			gone = append(gone, b.Digest)
			if err := os.Remove(f.site.BlobPath(b.Digest)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(gone) != 2 {
		t.Fatalf("fixture: %d required blocks, want 2", len(gone))
	}
	err = applyMustFail(t, f.site, f.bundle)
	var me *MissingError
	if !errors.As(err, &me) {
		t.Fatalf("error %v is not a MissingError", err)
	}
	if len(me.Missing) != 2 {
		t.Fatalf("missing %v, want both of %v", me.Missing, gone)
	}
	for _, d := range gone {
		if !strings.Contains(err.Error(), d.String()) {
			t.Errorf("error does not name %s: %v", d, err)
		}
	}
}

func TestApplyRefusesTruncatedBundle(t *testing.T) {
	f := newFixture(t)
	data, err := os.ReadFile(f.bundle)
	if err != nil {
		t.Fatal(err)
	}
	// In the header, in index.json, in the middle, inside the last blob.
	for _, cut := range []int{300, 1600, len(data) / 2, len(data) - 1030} {
		p := filepath.Join(t.TempDir(), "cut.bundle")
		if err := os.WriteFile(p, data[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		err := applyMustFail(t, f.site, p)
		// Refused as cut short, not as some other damage.
		if !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "truncated") {
			t.Errorf("cut at %d of %d: %v; want it reported as truncated", cut, len(data), err)
		}
	}
}

func TestApplyRefusesFlippedByte(t *testing.T) {
	f := newFixture(t)
	data, err := os.ReadFile(f.bundle)
	if err != nil {
		t.Fatal(err)
	}
	last := f.header.Blobs[len(f.header.Blobs)-1]
	// The last blob's data ends 1024 (end of archive) + padding before EOF.
	pad := (512 - last.Size%512) % 512
	for name, tc := range map[string]struct {
		off  int
		want func(error) bool
	}{
		// Inside the header's JSON: refused while the header is read.
		"header": {520, func(err error) bool { return strings.Contains(err.Error(), HeaderName) }},
		// Inside the last blob's data: its digest check.
		"last blob": {len(data) - 1024 - int(pad) - 1, func(err error) bool {
			return errors.Is(err, store.ErrDigestMismatch) && strings.Contains(err.Error(), last.Digest.String())
		}},
	} {
		bad := bytes.Clone(data)
		bad[tc.off] ^= 0x01
		p := filepath.Join(t.TempDir(), "flipped.bundle")
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := applyMustFail(t, f.site, p); !tc.want(err) {
			t.Errorf("flipped byte in the %s: %v; the wrong check fired", name, err)
		}
	}
}

// writeHeader writes a bundle for a hand-made header.
func writeHeader(t *testing.T, src *store.Store, h *Header) string {
	t.Helper()
	h.Adds = totals(h.Blobs)
	p := filepath.Join(t.TempDir(), "crafted.bundle")
	var buf bytes.Buffer
	if err := Write(context.Background(), &buf, src, h, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyRefusesBlobOutsideTheImages(t *testing.T) {
	f := newFixture(t)
	stray := []byte("a blob no manifest names")
	d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(stray), Size: int64(len(stray))}
	if err := f.src.Push(context.Background(), d, bytes.NewReader(stray)); err != nil {
		t.Fatal(err)
	}
	h := *f.header
	h.Blobs = append(append([]Blob{}, h.Blobs...), Blob{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Kind: KindBlock})
	err := applyMustFail(t, f.site, writeHeader(t, f.src, &h))
	if !strings.Contains(err.Error(), "not part of any image") {
		t.Errorf("error %v", err)
	}
}

func TestApplyRefusesIncompleteImage(t *testing.T) {
	f := newFixture(t)
	// Leave a new block member out of the bundle without listing it as
	// required: the prerequisite check passes, the closure check must not.
	h := *f.header
	h.Blobs = nil
	var dropped Blob
	for _, b := range f.header.Blobs {
		if b.Kind == KindBlock && dropped.Digest == "" {
			dropped = b
			continue
		}
		h.Blobs = append(h.Blobs, b)
	}
	err := applyMustFail(t, f.site, writeHeader(t, f.src, &h))
	if !strings.Contains(err.Error(), dropped.Digest.String()) {
		t.Errorf("error does not name %s: %v", dropped.Digest, err)
	}
}

func TestApplyRefusesLyingHeader(t *testing.T) {
	f := newFixture(t)
	h := *f.header
	h.Images = append([]Image{}, h.Images...)
	lie := digest.FromString("another image")
	h.Images[0].Standard.Digest = lie
	err := applyMustFail(t, f.site, writeHeader(t, f.src, &h))
	// The closure check must be what refused it: the header's standard
	// image against the one the image index names.
	want := "the header says standard image " + lie.String() + ", its index says " + f.header.Images[0].Standard.Digest.String()
	if !strings.Contains(err.Error(), want) {
		t.Errorf("apply = %v\nwant the check of the standard image: %q", err, want)
	}
}
