package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// dockerArchiveSource reads `docker save` output (and skopeo's
// docker-archive:): a tar holding manifest.json, the image configs and one
// tar per layer, uncompressed as Docker writes them (gzip and zstd layers are
// accepted too). It presents each image as a Docker schema2 manifest made up
// from manifest.json, so export sees what a registry would serve.
//
// manifest.json is parsed with go-containerregistry's tarball.Manifest type;
// tarball.Image itself is not used because for uncompressed layers it
// computes the manifest by gzipping every layer once just to learn digests,
// and re-reads the archive from the start for every file it opens. Here the
// archive is indexed once and read in place, as oci-archive is: an
// uncompressed layer's digest is its diff ID from the config (checked while
// it streams), and only a compressed layer is hashed when the archive is
// opened.
type dockerArchiveSource struct {
	file     string
	f        *os.File
	entries  map[string]section
	blobs    map[digest.Digest]section
	manifest []byte
	root     ocispec.Descriptor
}

// maxDockerLayers bounds the layers of one image (Docker allows 127; the
// overlay driver fails well before 1000).
const maxDockerLayers = 1000

func openDockerArchiveSource(_ context.Context, file, ref string) (_ *dockerArchiveSource, err error) {
	where := "docker-archive:" + file
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	entries, err := indexTar(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	d := &dockerArchiveSource{file: file, f: f, entries: entries, blobs: map[digest.Digest]section{}}
	if err := d.load(ref); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return d, nil
}

// load reads manifest.json and the chosen image's config, and makes up the
// image's manifest.
func (d *dockerArchiveSource) load(ref string) error {
	sec, ok := d.entries["manifest.json"]
	if !ok {
		return fmt.Errorf("no manifest.json: not a docker save archive")
	}
	var m tarball.Manifest
	if err := readJSON(io.NopCloser(io.NewSectionReader(d.f, sec.off, sec.size)), "manifest.json", &m); err != nil {
		return err
	}
	desc, err := selectDockerImage(m, ref)
	if err != nil {
		return err
	}
	if len(desc.LayerSources) > 0 {
		return fmt.Errorf("image %s has foreign layers (LayerSources), which are not supported", strings.Join(desc.RepoTags, ","))
	}
	if len(desc.Layers) > maxDockerLayers {
		return fmt.Errorf("manifest.json lists %d layers, more than %d", len(desc.Layers), maxDockerLayers)
	}

	// The config: hashed and parsed in one bounded read.
	csec, err := d.entry(desc.Config, "config")
	if err != nil {
		return err
	}
	if csec.size > maxJSON {
		return fmt.Errorf("config %s: %d bytes, more than %d", desc.Config, csec.size, maxJSON)
	}
	data, err := io.ReadAll(io.NewSectionReader(d.f, csec.off, csec.size))
	if err != nil {
		return fmt.Errorf("read config %s: %w", desc.Config, err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("parse config %s: %w", desc.Config, err)
	}
	if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != len(desc.Layers) {
		return fmt.Errorf("config %s: rootfs %q with %d diff IDs for %d layers in manifest.json", desc.Config, cfg.RootFS.Type, len(cfg.RootFS.DiffIDs), len(desc.Layers))
	}
	configDesc := ocispec.Descriptor{MediaType: MediaTypeDockerConfig, Digest: digest.FromBytes(data), Size: int64(len(data))}
	d.blobs[configDesc.Digest] = csec

	man := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: MediaTypeDockerManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{},
	}
	for i, p := range desc.Layers {
		l, err := d.layer(p, cfg.RootFS.DiffIDs[i])
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		man.Layers = append(man.Layers, l)
	}
	if d.manifest, err = json.Marshal(man); err != nil {
		return err
	}
	d.root = ocispec.Descriptor{MediaType: MediaTypeDockerManifest, Digest: digest.FromBytes(d.manifest), Size: int64(len(d.manifest))}
	return nil
}

// selectDockerImage picks the image named ref (a RepoTags entry, or @N for
// the N-th image, as skopeo takes it); without ref, the only image.
func selectDockerImage(m tarball.Manifest, ref string) (tarball.Descriptor, error) {
	var tags []string
	for _, e := range m {
		tags = append(tags, e.RepoTags...)
	}
	if strings.HasPrefix(ref, "@") {
		n, err := strconv.Atoi(ref[1:])
		if err != nil || n < 0 || n >= len(m) {
			return tarball.Descriptor{}, fmt.Errorf("image %q: want @0 to @%d", ref, len(m)-1)
		}
		return m[n], nil
	}
	if ref == "" {
		if len(m) != 1 {
			return tarball.Descriptor{}, fmt.Errorf("manifest.json lists %d images, name one with :REF or :@N (tags: %s)", len(m), strings.Join(tags, ", "))
		}
		return m[0], nil
	}
	for _, e := range m {
		for _, t := range e.RepoTags {
			if t == ref || (normalizeName(t) != "" && normalizeName(t) == normalizeName(ref)) {
				return e, nil
			}
		}
	}
	return tarball.Descriptor{}, fmt.Errorf("no image tagged %q (tags: %s)", ref, strings.Join(tags, ", "))
}

// entry finds a file named by manifest.json; names are cleaned and looked up
// in the archive's own index, so they never reach the file system.
func (d *dockerArchiveSource) entry(name, what string) (section, error) {
	sec, ok := d.entries[cleanEntry(name)]
	if !ok {
		return section{}, fmt.Errorf("%s %q: not in the archive", what, name)
	}
	return sec, nil
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// layer describes the layer file p whose uncompressed digest is diffID.
func (d *dockerArchiveSource) layer(p string, diffID digest.Digest) (ocispec.Descriptor, error) {
	if err := diffID.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("diff ID %q: %w", diffID, err)
	}
	sec, err := d.entry(p, "layer")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	head := make([]byte, 4)
	n, _ := io.ReadFull(io.NewSectionReader(d.f, sec.off, sec.size), head)
	head = head[:n]
	desc := ocispec.Descriptor{MediaType: MediaTypeDockerLayerTar, Digest: diffID, Size: sec.size}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		desc.MediaType = MediaTypeDockerLayerGzip
	case bytes.HasPrefix(head, zstdMagic):
		desc.MediaType = MediaTypeDockerLayerZstd
	}
	if desc.MediaType != MediaTypeDockerLayerTar {
		// A compressed layer's digest is not in the config: hash it
		// (streaming). Export still checks its diff ID when it unpacks it.
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(d.f, sec.off, sec.size)); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%s: %w", p, err)
		}
		desc.Digest = digest.NewDigest(digest.SHA256, h)
	}
	d.blobs[desc.Digest] = sec
	return desc, nil
}

func (d *dockerArchiveSource) Resolve(context.Context) (ocispec.Descriptor, error) {
	return d.root, nil
}

func (d *dockerArchiveSource) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	var r io.Reader
	if desc.Digest == d.root.Digest {
		r = bytes.NewReader(d.manifest)
	} else {
		sec, ok := d.blobs[desc.Digest]
		if !ok {
			return nil, fmt.Errorf("docker-archive:%s: blob %s: not in the archive", d.file, desc.Digest)
		}
		r = io.NewSectionReader(d.f, sec.off, sec.size)
	}
	vr, err := newVerifyReader(r, desc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(vr), nil
}

func (d *dockerArchiveSource) Close() error { return d.f.Close() }
