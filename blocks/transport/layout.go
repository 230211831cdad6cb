package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// layoutSource reads an OCI image layout directory.
type layoutSource struct {
	dir  string
	root ocispec.Descriptor
}

func openLayoutSource(dir, ref string) (*layoutSource, error) {
	where := "oci:" + dir
	f, err := os.Open(filepath.Join(dir, ocispec.ImageIndexFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var idx ocispec.Index
	if err := readJSON(f, filepath.Join(dir, ocispec.ImageIndexFile), &idx); err != nil {
		return nil, err
	}
	root, err := selectRoot(idx, ref, where)
	if err != nil {
		return nil, err
	}
	return &layoutSource{dir: dir, root: root}, nil
}

func (l *layoutSource) Resolve(context.Context) (ocispec.Descriptor, error) { return l.root, nil }

func (l *layoutSource) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	p, err := blobPath(l.dir, desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("oci:%s: blob %s: %w", l.dir, desc.Digest, err)
	}
	vr, err := newVerifyReader(f, desc)
	if err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{vr, f}, nil
}

func (l *layoutSource) Close() error { return nil }

// blobPath returns where a layout keeps d, refusing digests that are not
// well formed (so a hostile descriptor cannot name a path outside blobs/).
func blobPath(dir string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob digest %q: %w", d, err)
	}
	return filepath.Join(dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded()), nil
}

// layoutSink writes an OCI image layout directory. A new directory is built
// as a hidden sibling and renamed into place at Commit; in an existing one,
// new blobs are added (each temp + verify + rename) and index.json is
// replaced atomically at Commit, so an abort leaves the old image intact.
type layoutSink struct {
	dir   string // the destination
	work  string // where blobs go: dir, or a sibling temp dir while dir does not exist
	fresh bool
	ref   string
	mu    sync.Mutex // guards added: Push may run on several goroutines
	added []string   // blobs created in an existing dir, removed again on Abort
	// checked: blobs hashed (or written) by this sink, so Exists hashes an
	// existing blob once.
	checked map[digest.Digest]bool
	done    bool
}

func newLayoutSink(dir, ref string) (*layoutSink, error) {
	dir = filepath.Clean(dir)
	s := &layoutSink{dir: dir, ref: ref}
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		return nil, fmt.Errorf("oci:%s: exists and is not a directory", dir)
	case err == nil:
		s.work = dir
		if err := refuseNonLayout(dir); err != nil {
			return nil, err
		}
		if err := ensureLayoutFile(dir); err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		parent := filepath.Dir(dir)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, fmt.Errorf("oci:%s: %w", dir, err)
		}
		tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
		if err != nil {
			return nil, fmt.Errorf("oci:%s: %w", dir, err)
		}
		s.work, s.fresh = tmp, true
		if err := ensureLayoutFile(tmp); err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
	default:
		return nil, fmt.Errorf("oci:%s: %w", dir, err)
	}
	return s, nil
}

// ErrNotLayout: an oci: destination is a directory with content that is
// not an OCI image layout.
var ErrNotLayout = errors.New("not an OCI image layout")

// refuseNonLayout refuses to write into an existing directory that holds
// anything but is not an OCI image layout (no oci-layout file): a mistyped
// path must not have its index.json replaced or blobs/ filled.
func refuseNonLayout(dir string) error {
	if _, err := os.Lstat(filepath.Join(dir, ocispec.ImageLayoutFile)); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("oci:%s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("oci:%s: %w", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) == 0 && errors.Is(err, io.EOF) {
		return nil // empty: becomes a layout
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("oci:%s: %w", dir, err)
	}
	return fmt.Errorf("oci:%s: the directory is not empty and has no %s file: %w; name a new or empty directory, or an existing layout", dir, ocispec.ImageLayoutFile, ErrNotLayout)
}

// ensureLayoutFile writes the oci-layout marker if it is missing or empty.
func ensureLayoutFile(dir string) error {
	p := filepath.Join(dir, ocispec.ImageLayoutFile)
	if st, err := os.Stat(p); err == nil && st.Size() > 0 {
		return nil
	}
	data, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	return writeFileAtomic(p, data)
}

// Exists reports whether the layout holds desc intact. Presence is judged
// by content, not by name or size: a blob of the right size is hashed
// (once per sink), and a damaged one counts as absent so Push replaces it.
func (s *layoutSink) Exists(ctx context.Context, desc ocispec.Descriptor) (bool, error) {
	p, err := blobPath(s.work, desc.Digest)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	ok := s.checked[desc.Digest]
	s.mu.Unlock()
	if ok {
		return true, nil
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("oci:%s: %w", s.dir, err)
	}
	if !st.Mode().IsRegular() || st.Size() != desc.Size {
		return false, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return false, fmt.Errorf("oci:%s: %w", s.dir, err)
	}
	defer f.Close()
	h := desc.Digest.Algorithm().Hash()
	if _, err := io.CopyBuffer(h, ctxReader{ctx, f}, make([]byte, copyBufSize)); err != nil {
		return false, fmt.Errorf("oci:%s: blob %s: %w", s.dir, desc.Digest, err)
	}
	if digest.NewDigest(desc.Digest.Algorithm(), h) != desc.Digest {
		return false, nil // damaged: Push replaces it
	}
	s.markChecked(desc.Digest)
	return true, nil
}

func (s *layoutSink) markChecked(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checked == nil {
		s.checked = map[digest.Digest]bool{}
	}
	s.checked[d] = true
}

func (s *layoutSink) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	if s.done {
		return fmt.Errorf("oci:%s: push after commit or abort", s.dir)
	}
	if ok, err := s.Exists(ctx, desc); err != nil || ok {
		return err
	}
	p, _ := blobPath(s.work, desc.Digest)
	created, err := writeBlobFile(p, desc, r)
	if err != nil {
		return fmt.Errorf("oci:%s: %w", s.dir, err)
	}
	s.markChecked(desc.Digest)
	if created && !s.fresh {
		s.mu.Lock()
		s.added = append(s.added, p)
		s.mu.Unlock()
	}
	return nil
}

// writeBlobFile streams r into p with the one committer (fsutil): a temp
// file in the same directory, verified (size and digest) while written,
// fsync, read-only, rename, directory fsync. A damaged file at p is
// replaced; created says whether p did not exist before (so Abort may
// remove it).
func writeBlobFile(p string, desc ocispec.Descriptor, r io.Reader) (created bool, err error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, err
	}
	vr, err := newVerifyReader(r, desc)
	if err != nil {
		return false, err
	}
	t, err := fsutil.Create(filepath.Dir(p), ".tmp-blob")
	if err != nil {
		return false, err
	}
	defer t.Close()
	if _, err = io.CopyBuffer(t, vr, make([]byte, copyBufSize)); err != nil {
		return false, fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	_, serr := os.Lstat(p)
	// The verify reader checked the digest at EOF: "" asks the committer
	// for the size check only.
	if err := t.CommitBlob(p, desc, ""); err != nil {
		return false, err
	}
	return errors.Is(serr, fs.ErrNotExist), nil
}

func (s *layoutSink) Commit(ctx context.Context, root ocispec.Descriptor) error {
	if s.done {
		return fmt.Errorf("oci:%s: commit after commit or abort", s.dir)
	}
	if ok, err := s.Exists(ctx, root); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("oci:%s: commit: root %s was not pushed", s.dir, root.Digest)
	}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	indexPath := filepath.Join(s.work, ocispec.ImageIndexFile)
	if f, err := os.Open(indexPath); err == nil {
		if err := readJSON(f, indexPath, &idx); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("oci:%s: %w", s.dir, err)
	}
	idx.Manifests = replaceEntry(idx.Manifests, root, s.ref)
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(indexPath, data); err != nil {
		return fmt.Errorf("oci:%s: write index.json: %w", s.dir, err)
	}
	if s.fresh {
		if err := os.Rename(s.work, s.dir); err != nil {
			return fmt.Errorf("oci:%s: move into place: %w", s.dir, err)
		}
		if err := fsutil.SyncDir(filepath.Dir(s.dir)); err != nil {
			return fmt.Errorf("oci:%s: %w", s.dir, err)
		}
	}
	s.done = true
	return nil
}

func (s *layoutSink) Abort() error {
	if s.done {
		return nil
	}
	s.done = true
	if s.fresh {
		return os.RemoveAll(s.work)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, p := range s.added {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// replaceEntry puts root into an index.json manifest list under ref,
// dropping any entry of the same name (or, unnamed, the same digest).
func replaceEntry(entries []ocispec.Descriptor, root ocispec.Descriptor, ref string) []ocispec.Descriptor {
	out := entries[:0:0]
	for _, e := range entries {
		n := e.Annotations[ocispec.AnnotationRefName]
		if (ref != "" && n == ref) || (ref == "" && n == "" && e.Digest == root.Digest) {
			continue
		}
		out = append(out, e)
	}
	return append(out, ocispec.Descriptor{
		MediaType:   root.MediaType,
		Digest:      root.Digest,
		Size:        root.Size,
		Annotations: refAnnotations(ref),
	})
}

// writeFileAtomic writes data to p through the committer: temp file,
// fsync, rename, directory fsync.
func writeFileAtomic(p string, data []byte) error {
	return fsutil.WriteFile("", p, data, 0o644, true)
}

// ctxReader makes long reads stop when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
