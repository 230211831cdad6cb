package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"math/rand"
	"testing"
	"time"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/transport"
)

// tfile is one tar entry of a synthetic layer.
type tfile struct {
	name     string
	typ      byte
	data     []byte
	link     string
	mode     int64
	uid      int
	mtime    time.Time
	xattrs   map[string]string
	randSize int64 // if set, data is randSize bytes from a PRNG seeded by seed
	seed     int64
}

// makeTar writes entries as a tar (PAX where needed), streaming random data.
func makeTar(w io.Writer, files []tfile) error {
	tw := tar.NewWriter(w)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Typeflag: f.typ, Linkname: f.link, Mode: f.mode, Uid: f.uid, ModTime: f.mtime}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if len(f.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range f.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		var src io.Reader
		switch {
		case f.randSize > 0:
			h.Size = f.randSize
			src = io.LimitReader(rand.New(rand.NewSource(f.seed)), f.randSize)
		case f.typ == tar.TypeReg:
			h.Size = int64(len(f.data))
			src = bytes.NewReader(f.data)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if src != nil {
			if _, err := io.Copy(tw, src); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// layoutBuilder writes a synthetic image into an oci: sink the way a
// builder would: gzip layers (one stream each), a config with diff_ids.
type layoutBuilder struct {
	t    testing.TB
	sink transport.Sink
}

// layer pushes a gzip layer built from files and returns its descriptor and diffID.
func (b *layoutBuilder) layer(files []tfile) (ocispec.Descriptor, digest.Digest) {
	b.t.Helper()
	var gz bytes.Buffer
	diff := sha256.New()
	zw := kgzip.NewWriter(&gz)
	if err := makeTar(io.MultiWriter(zw, diff), files); err != nil {
		b.t.Fatal(err)
	}
	zw.Close()
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
	b.push(d, gz.Bytes())
	return d, digest.NewDigest(digest.SHA256, diff)
}

func (b *layoutBuilder) push(d ocispec.Descriptor, data []byte) {
	b.t.Helper()
	if err := b.sink.Push(context.Background(), d, bytes.NewReader(data)); err != nil {
		b.t.Fatal(err)
	}
}

func (b *layoutBuilder) json(mt string, v any) ocispec.Descriptor {
	b.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		b.t.Fatal(err)
	}
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
	b.push(d, data)
	return d
}

// image pushes a config and manifest for layers and returns the manifest.
func (b *layoutBuilder) image(arch string, labels map[string]string, layers ...[]tfile) ocispec.Descriptor {
	b.t.Helper()
	var descs []ocispec.Descriptor
	var diffs []digest.Digest
	for _, files := range layers {
		d, diff := b.layer(files)
		descs = append(descs, d)
		diffs = append(diffs, diff)
	}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: arch},
		Config:   ocispec.ImageConfig{Labels: labels},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffs},
	}
	cd := b.json(ocispec.MediaTypeImageConfig, cfg)
	return b.json(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: descs,
	})
}

func (b *layoutBuilder) commit(root ocispec.Descriptor) {
	b.t.Helper()
	if err := b.sink.Commit(context.Background(), root); err != nil {
		b.t.Fatal(err)
	}
}

func newBuilder(t testing.TB, ref string) *layoutBuilder {
	t.Helper()
	s, err := transport.ParseSink(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return &layoutBuilder{t: t, sink: s}
}

// richLayers are layers with the awkward cases: PAX long names, xattrs,
// hard links, symlinks, empty files, 512-multiple sizes, whiteouts, an
// opaque dir, and the same big file at two paths with other owners/mtimes.
func richLayers() [][]tfile {
	long := "app/" + string(bytes.Repeat([]byte("very-long-directory-name/"), 6)) + "lib.jar"
	jar := tfile{typ: tar.TypeReg, randSize: 300 << 10, seed: 42}
	a, b := jar, jar
	a.name, b.name = "app/libs/x.jar", "opt/other/x-copy.jar"
	b.uid, b.mtime, b.mode = 1000, time.Unix(1600000000, 0), 0o600
	return [][]tfile{
		{
			{name: "app/", typ: tar.TypeDir, mode: 0o755},
			{name: "app/libs/", typ: tar.TypeDir, mode: 0o755},
			a,
			{name: "app/small.txt", typ: tar.TypeReg, data: []byte("hello\n")},
			{name: "app/empty", typ: tar.TypeReg},
			{name: "app/exact512", typ: tar.TypeReg, randSize: 64 << 10, seed: 7},
			{name: long, typ: tar.TypeReg, randSize: 70000, seed: 8},
			{name: "app/xattr.bin", typ: tar.TypeReg, randSize: 66000, seed: 9, xattrs: map[string]string{"user.test": "v"}},
			{name: "app/hard.jar", typ: tar.TypeLink, link: "app/libs/x.jar"},
			{name: "app/sym", typ: tar.TypeSymlink, link: "libs/x.jar"},
			{name: "app/old/", typ: tar.TypeDir, mode: 0o755},
			{name: "app/old/gone.txt", typ: tar.TypeReg, data: []byte("bye")},
		},
		{
			{name: "app/.wh.small.txt", typ: tar.TypeReg},
			{name: "app/old/", typ: tar.TypeDir, mode: 0o755},
			{name: "app/old/.wh..wh..opq", typ: tar.TypeReg},
			{name: "opt/", typ: tar.TypeDir, mode: 0o755},
			{name: "opt/other/", typ: tar.TypeDir, mode: 0o755},
			b,
			{name: "opt/tiny", typ: tar.TypeReg, data: []byte("x")},
		},
		{
			{name: "etc/", typ: tar.TypeDir, mode: 0o755},
			{name: "etc/conf", typ: tar.TypeReg, data: []byte("k=v\n")},
		},
	}
}
