// Package benchimg builds OCI images from the layer directories of the
// ../shared/bench scenario, the way a plain `docker build` with one COPY per
// layer would: one deterministic tar+gzip layer per directory. Benchmarks use
// it so that they need no buildkitd; layers shared by several images are
// written once.
package benchimg

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Scenario is the bench scenario root ($BENCH/scenario).
type Scenario struct{ Root string }

// DefaultScenario returns $BENCH/scenario (BENCH defaults to /tmp/bench).
func DefaultScenario() Scenario {
	b := os.Getenv("BENCH")
	if b == "" {
		b = "/tmp/bench"
	}
	return Scenario{Root: filepath.Join(b, "scenario")}
}

// Exists reports whether the scenario has been generated.
func (s Scenario) Exists() bool {
	_, err := os.Stat(filepath.Join(s.Root, "images", "v1", "layers"))
	return err == nil
}

// Layers returns the layer names of a variant ("layers" or "jib-layers" list).
func (s Scenario) Layers(variant, list string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(s.Root, "images", variant, list))
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	return strings.Fields(string(b)), nil
}

// LayerDir is the directory of a named layer.
func (s Scenario) LayerDir(name string) string { return filepath.Join(s.Root, "layers", name) }

// Layer is a written tar+gzip layer.
type Layer struct {
	Desc   ocispec.Descriptor
	DiffID digest.Digest
	TarLen int64
}

// Builder writes layers and images into one OCI layout directory, caching
// layers by source directory.
type Builder struct {
	Dir    string
	layers map[string]Layer
	index  ocispec.Index
}

// NewBuilder creates (or reuses) an OCI layout at dir.
func NewBuilder(dir string) (*Builder, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return nil, err
	}
	return &Builder{Dir: dir, layers: map[string]Layer{}, index: ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}}, nil
}

// Layer writes (once) the tar+gzip layer of directory dir.
func (b *Builder) Layer(ctx context.Context, dir string) (Layer, error) {
	if l, ok := b.layers[dir]; ok {
		return l, nil
	}
	tmp, err := os.CreateTemp(filepath.Join(b.Dir, "blobs", "sha256"), ".layer-*")
	if err != nil {
		return Layer{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	ch, uh := sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, ch)}
	gz, err := gzip.NewWriterLevel(cw, 6)
	if err != nil {
		return Layer{}, err
	}
	uw := &countWriter{w: io.MultiWriter(gz, uh)}
	if err := WriteTar(ctx, dir, uw); err != nil {
		return Layer{}, fmt.Errorf("layer %s: %w", dir, err)
	}
	if err := gz.Close(); err != nil {
		return Layer{}, err
	}
	d := digestOf(ch)
	if err := tmp.Close(); err != nil {
		return Layer{}, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(b.Dir, "blobs", "sha256", d.Encoded())); err != nil {
		return Layer{}, err
	}
	l := Layer{Desc: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: cw.n}, DiffID: digestOf(uh), TarLen: uw.n}
	b.layers[dir] = l
	return l, nil
}

// Image writes an image made of the given layer directories (bottom to top)
// and tags it as name in the layout's index.json. It returns the manifest
// descriptor.
func (b *Builder) Image(ctx context.Context, name string, dirs []string) (ocispec.Descriptor, []Layer, error) {
	var layers []Layer
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/sh"}},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	for _, d := range dirs {
		l, err := b.Layer(ctx, d)
		if err != nil {
			return ocispec.Descriptor{}, nil, err
		}
		layers = append(layers, l)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
		m.Layers = append(m.Layers, l.Desc)
	}
	cd, err := b.putJSON(ocispec.MediaTypeImageConfig, cfg)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	m.Config = cd
	md, err := b.putJSON(ocispec.MediaTypeImageManifest, m)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	md.Annotations = map[string]string{ocispec.AnnotationRefName: name}
	kept := b.index.Manifests[:0]
	for _, e := range b.index.Manifests {
		if e.Annotations[ocispec.AnnotationRefName] != name {
			kept = append(kept, e)
		}
	}
	b.index.Manifests = append(kept, md)
	ib, err := json.Marshal(b.index)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if err := writeAtomic(filepath.Join(b.Dir, ocispec.ImageIndexFile), ib); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	md.Annotations = nil
	return md, layers, nil
}

func (b *Builder) putJSON(mt string, v any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := digest.FromBytes(data)
	if err := writeAtomic(filepath.Join(b.Dir, "blobs", "sha256", d.Encoded()), data); err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(data))}, nil
}

// WriteTar writes the directory tree under root as a tar stream with paths
// relative to root, in byte order, keeping modes, owners, mtimes, symlinks and
// hard links (the second path of an inode becomes a link entry).
func WriteTar(ctx context.Context, root string, w io.Writer) error {
	tw := tar.NewWriter(w)
	seen := map[[2]uint64]string{}
	var paths []string
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		rel, _ := filepath.Rel(root, p)
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		// Whole-second mtimes and no atime/ctime, like docker's tar writer,
		// so the same tree always gives the same layer.
		hdr.ModTime = fi.ModTime().Truncate(time.Second)
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), uint64(st.Ino)} // Dev is int32 on darwin
			if first, ok := seen[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				seen[key] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.CopyBuffer(tw, f, buf)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	return tw.Close()
}

func digestOf(h hash.Hash) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
