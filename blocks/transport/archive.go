package transport

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
	"github.com/blockfile/blockfile/blocks/store"
)

// archiveSource reads an oci-archive (a tar of an OCI layout) in place: it
// indexes the offset of every regular entry once and reads blobs as
// sections of the file, so nothing is extracted or held in memory.
type archiveSource struct {
	file    string
	f       *os.File
	entries map[string]section
	root    ocispec.Descriptor
}

type section struct{ off, size int64 }

func openArchiveSource(_ context.Context, file, ref string) (*archiveSource, error) {
	where := "oci-archive:" + file
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	a := &archiveSource{file: file, f: f, entries: map[string]section{}}
	if err := a.index(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	sec, ok := a.entries[ocispec.ImageIndexFile]
	if !ok {
		f.Close()
		return nil, fmt.Errorf("%s: no index.json: not an OCI archive", where)
	}
	var idx ocispec.Index
	if err := readJSON(io.NopCloser(io.NewSectionReader(f, sec.off, sec.size)), where+": index.json", &idx); err != nil {
		f.Close()
		return nil, err
	}
	if a.root, err = selectRoot(idx, ref, where); err != nil {
		f.Close()
		return nil, err
	}
	return a, nil
}

// index records where every regular entry's data lies in the file.
func (a *archiveSource) index() error {
	entries, err := indexTar(a.f)
	if err != nil {
		return err
	}
	a.entries = entries
	return nil
}

// indexTar walks the tar headers of f and returns the section of the file
// holding each regular entry's data, by cleaned name. Hard links and
// symbolic links (docker save links a repeated layer to its first copy) are
// resolved to the entry they name inside the archive; nothing outside it is
// ever followed. archive/tar reads exactly one header at a time from an
// *os.File and seeks over entry data, so the file offset after Next is where
// the entry's data starts.
func indexTar(f *os.File) (map[string]section, error) {
	tr := tar.NewReader(f)
	entries := map[string]section{}
	links := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read tar: %w", err)
		}
		name := cleanEntry(h.Name)
		switch h.Typeflag {
		case tar.TypeReg:
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, err
			}
			entries[name] = section{off: off, size: h.Size}
		case tar.TypeLink:
			links[name] = cleanEntry(h.Linkname)
		case tar.TypeSymlink:
			target := h.Linkname
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(name), target)
			}
			links[name] = cleanEntry(target)
		case tar.TypeGNUSparse:
			return nil, fmt.Errorf("entry %q: sparse files are not supported", h.Name)
		}
	}
	// Links to links: a few hops at most; a cycle resolves to nothing.
	for range 8 {
		progress := false
		for name, target := range links {
			if sec, ok := entries[target]; ok {
				entries[name] = sec
				delete(links, name)
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	return entries, nil
}

func cleanEntry(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

func (a *archiveSource) Resolve(context.Context) (ocispec.Descriptor, error) { return a.root, nil }

func (a *archiveSource) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("oci-archive:%s: blob digest %q: %w", a.file, desc.Digest, err)
	}
	name := path.Join(ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	sec, ok := a.entries[name]
	if !ok {
		return nil, fmt.Errorf("oci-archive:%s: blob %s: not in the archive", a.file, desc.Digest)
	}
	vr, err := newVerifyReader(io.NewSectionReader(a.f, sec.off, sec.size), desc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(vr), nil
}

func (a *archiveSource) Close() error { return a.f.Close() }

// archiveSink streams an oci-archive: each pushed blob becomes a tar entry
// as it arrives (verified on the way), written to FILE.tmp-* and renamed at
// Commit. The archive holds index.json (loadable by `ctr images import`,
// skopeo and docker >= 25) and, for a single-platform image, a docker-save
// style manifest.json for older `docker load`.
type archiveSink struct {
	path      string
	ref       string
	f         *fsutil.File // the archive, under a temp name until Commit
	tw        *tar.Writer
	have      map[digest.Digest]bool
	manifests map[digest.Digest][]byte // manifest JSON kept for Commit
	err       error                    // sticky: a failed entry leaves the tar unusable
	done      bool
}

func newArchiveSink(file, ref string) (*archiveSink, error) {
	file = filepath.Clean(file)
	if st, err := os.Stat(file); err == nil && st.IsDir() {
		return nil, fmt.Errorf("oci-archive:%s: is a directory", file)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return nil, fmt.Errorf("oci-archive:%s: %w", file, err)
	}
	f, err := fsutil.Create(filepath.Dir(file), "."+filepath.Base(file))
	if err != nil {
		return nil, fmt.Errorf("oci-archive:%s: %w", file, err)
	}
	s := &archiveSink{path: file, ref: ref, f: f, tw: tar.NewWriter(f), have: map[digest.Digest]bool{}, manifests: map[digest.Digest][]byte{}}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: archiveTime, Format: tar.FormatPAX}); err != nil {
			s.Abort()
			return nil, fmt.Errorf("oci-archive:%s: %w", file, err)
		}
	}
	if err := s.writeFile(ocispec.ImageLayoutFile, layout); err != nil {
		s.Abort()
		return nil, err
	}
	return s, nil
}

// archiveTime is the fixed mtime of every entry, so the same image gives
// the same archive bytes.
var archiveTime = time.Unix(0, 0).UTC()

func (s *archiveSink) writeFile(name string, data []byte) error {
	if err := s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data)), Mode: 0o644, ModTime: archiveTime, Format: tar.FormatPAX}); err != nil {
		s.err = err
		return fmt.Errorf("oci-archive:%s: %s: %w", s.path, name, err)
	}
	if _, err := s.tw.Write(data); err != nil {
		s.err = err
		return fmt.Errorf("oci-archive:%s: %s: %w", s.path, name, err)
	}
	return nil
}

func (s *archiveSink) Exists(_ context.Context, desc ocispec.Descriptor) (bool, error) {
	return s.have[desc.Digest], nil
}

func (s *archiveSink) Push(_ context.Context, desc ocispec.Descriptor, r io.Reader) error {
	if s.done {
		return fmt.Errorf("oci-archive:%s: push after commit or abort", s.path)
	}
	if s.err != nil {
		return fmt.Errorf("oci-archive:%s: an earlier write failed: %w", s.path, s.err)
	}
	if s.have[desc.Digest] {
		return nil
	}
	if desc.Digest.Algorithm() != digest.SHA256 {
		return fmt.Errorf("oci-archive:%s: blob %s: only sha256 digests are supported", s.path, desc.Digest)
	}
	vr, err := newVerifyReader(r, desc)
	if err != nil {
		return err
	}
	var src io.Reader = vr
	var keep *bytes.Buffer
	if (IsManifest(desc.MediaType) || IsIndex(desc.MediaType)) && desc.Size <= maxJSON {
		keep = &bytes.Buffer{}
		src = io.TeeReader(vr, keep)
	}
	name := path.Join(ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	if err := s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: desc.Size, Mode: 0o444, ModTime: archiveTime, Format: tar.FormatPAX}); err != nil {
		s.err = err
		return fmt.Errorf("oci-archive:%s: %w", s.path, err)
	}
	// Read to EOF so the verifier runs; tw refuses more than desc.Size bytes.
	n, err := io.CopyBuffer(s.tw, src, make([]byte, copyBufSize))
	if err == nil && n != desc.Size {
		err = fmt.Errorf("blob %s: got %d bytes, declared %d: %w", desc.Digest, n, desc.Size, store.ErrSizeMismatch)
	}
	if err != nil {
		s.err = err
		return fmt.Errorf("oci-archive:%s: %w", s.path, err)
	}
	s.have[desc.Digest] = true
	if keep != nil {
		s.manifests[desc.Digest] = keep.Bytes()
	}
	return nil
}

// dockerSaveEntry is one image in a docker-save manifest.json.
type dockerSaveEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func (s *archiveSink) Commit(_ context.Context, root ocispec.Descriptor) error {
	if s.done {
		return fmt.Errorf("oci-archive:%s: commit after commit or abort", s.path)
	}
	if s.err != nil {
		return fmt.Errorf("oci-archive:%s: an earlier write failed: %w", s.path, s.err)
	}
	if !s.have[root.Digest] {
		return fmt.Errorf("oci-archive:%s: commit: root %s was not pushed", s.path, root.Digest)
	}
	idx := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: replaceEntry(nil, root, s.ref),
	}
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if IsManifest(root.MediaType) {
		var m ocispec.Manifest
		if err := json.Unmarshal(s.manifests[root.Digest], &m); err != nil {
			return fmt.Errorf("oci-archive:%s: parse manifest %s: %w", s.path, root.Digest, err)
		}
		e := dockerSaveEntry{Config: blobName(m.Config.Digest), Layers: []string{}}
		for _, l := range m.Layers {
			e.Layers = append(e.Layers, blobName(l.Digest))
		}
		if n := familiarName(s.ref); n != "" && looksLikeImageName(s.ref) {
			e.RepoTags = []string{n}
		}
		ms, err := json.Marshal([]dockerSaveEntry{e})
		if err != nil {
			return err
		}
		if err := s.writeFile("manifest.json", ms); err != nil {
			return err
		}
	}
	if err := s.writeFile(ocispec.ImageIndexFile, data); err != nil {
		return err
	}
	if err := s.tw.Close(); err != nil {
		return s.fail(err)
	}
	// The one committer: fsync, mode, rename, directory fsync.
	if err := s.f.Commit(s.path, 0o644); err != nil {
		return s.fail(err)
	}
	s.done = true
	return nil
}

func (s *archiveSink) fail(err error) error {
	s.err = err
	return fmt.Errorf("oci-archive:%s: %w", s.path, err)
}

func blobName(d digest.Digest) string {
	return path.Join(ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

func (s *archiveSink) Abort() error {
	if s.done {
		return nil
	}
	s.done = true
	return s.f.Close()
}
