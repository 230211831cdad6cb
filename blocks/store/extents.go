package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// Extents: a blob stored as a byte range of another blob.
//
// A standard layer is its blocked layer's members with each stub replaced
// by a header member and the block member itself (docs/FORMAT.md section
// 5), so every block member of a layer lies, byte for byte, inside the
// standard layer. A pull that writes the standard layer would otherwise
// write each of its members a second time, into a file of its own: twice
// the bytes, and a file per member (hundreds per image), which made a first
// pull slower than `skopeo copy` of the same image (docs/BENCHMARKS.md).
// Instead the writer marks the members as it writes the layer
// (BlobWriter.StartExtent, EndExtent; each checked against its digest and
// size like any blob), and the store records where they lie:
//
//	blockfile/extents/<alg>/<host hex>: {"host": descriptor, "extents": [{digest, size, offset}]}
//
// The record is written when its host is committed, never before its host
// is durable. To every reader the member is then a blob like any other:
// Fetch, Exists, OpenUnverified and OpenFile find it (a blob file of its
// own, if there is one, comes first), verified the same way. gc keeps the
// record while its host lives; before it sweeps a host, it copies the
// extents still referenced into files of their own. verify hashes every
// extent. A record whose host is gone is stale: readers ignore it, gc
// removes it.
//
// The in-memory index of the records is reloaded whenever the records
// directory changes (another process may write one), which a stat of it
// tells.

const (
	extentsDir = "blockfile/extents" // extents/<alg>/<host hex>
	// maxExtentRecord caps a record (a layer of a hundred thousand blocks).
	maxExtentRecord = MaxJSONSize
)

// Extent is a blob that lies at Offset of another blob (its host).
type Extent struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Offset int64         `json:"offset"`
}

type extentRecord struct {
	Host    ocispec.Descriptor `json:"host"`
	Extents []Extent           `json:"extents"`
}

// extentLoc is where a blob lies: in host, at off.
type extentLoc struct {
	host      ocispec.Descriptor
	off, size int64
}

// extentIndex caches the records (see above).
type extentIndex struct {
	mu     sync.Mutex
	loaded bool
	stamp  fsutil.ID
	m      map[digest.Digest]extentLoc
}

func (s *Store) extentRecordPath(host digest.Digest) string {
	return s.path(path.Join(extentsDir, host.Algorithm().String(), host.Encoded()))
}

// validExtents checks a record against its host's size: names, sizes and
// ranges, so that nothing read from it reaches past its host.
func validExtents(rec *extentRecord) error {
	if err := rec.Host.Digest.Validate(); err != nil || rec.Host.Size < 0 {
		return fmt.Errorf("host %q: %w", rec.Host.Digest, ErrInvalid)
	}
	for _, e := range rec.Extents {
		if err := e.Digest.Validate(); err != nil {
			return fmt.Errorf("extent %q: %w", e.Digest, ErrInvalid)
		}
		if e.Size < 0 || e.Offset < 0 || e.Offset > rec.Host.Size-e.Size {
			return fmt.Errorf("extent %s: %d bytes at offset %d of a %d-byte host: %w", e.Digest, e.Size, e.Offset, rec.Host.Size, ErrInvalid)
		}
	}
	return nil
}

// readExtentRecord reads and checks the record file p.
func readExtentRecord(p string) (*extentRecord, error) {
	b, err := readSmall(p, maxExtentRecord)
	if err != nil {
		return nil, err
	}
	var rec extentRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("extent record %s: %w", p, err)
	}
	if err := validExtents(&rec); err != nil {
		return nil, fmt.Errorf("extent record %s: %w", p, err)
	}
	if want := filepath.Base(p); rec.Host.Digest.Encoded() != want {
		return nil, fmt.Errorf("extent record %s names host %s: %w", p, rec.Host.Digest, ErrInvalid)
	}
	return &rec, nil
}

// eachExtentRecord calls fn for every record file, with the record or the
// error reading it.
func (s *Store) eachExtentRecord(ctx context.Context, fn func(p string, rec *extentRecord, err error) error) error {
	top := s.path(extentsDir)
	algs, err := os.ReadDir(top)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store %s: %w", s.root, err)
	}
	for _, a := range algs {
		if !a.IsDir() || !digest.Algorithm(a.Name()).Available() {
			continue
		}
		dir := filepath.Join(top, a.Name())
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("store %s: %w", s.root, err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !e.Type().IsRegular() || digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), e.Name()).Validate() != nil {
				continue
			}
			p := filepath.Join(dir, e.Name())
			rec, err := readExtentRecord(p)
			if errors.Is(err, os.ErrNotExist) {
				continue // removed meanwhile (gc)
			}
			if err := fn(p, rec, err); err != nil {
				return err
			}
		}
	}
	return nil
}

// extentOf returns where the blob d lies as an extent, if a record says.
// The host may since have gone; callers open it and treat its absence as
// the blob's.
func (s *Store) extentOf(d digest.Digest) (extentLoc, bool, error) {
	x := &s.extents
	x.mu.Lock()
	defer x.mu.Unlock()
	dir := s.path(path.Join(extentsDir, digest.SHA256.String()))
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		x.m, x.loaded = nil, false
		return extentLoc{}, false, nil
	}
	if err != nil {
		return extentLoc{}, false, fmt.Errorf("store %s: %w", s.root, err)
	}
	stamp, ok := fsutil.IDOf(fi)
	if !x.loaded || !ok || stamp != x.stamp {
		m := map[digest.Digest]extentLoc{}
		err := s.eachExtentRecord(context.Background(), func(_ string, rec *extentRecord, err error) error {
			if err != nil {
				return nil // verify reports it; gc removes it
			}
			for _, e := range rec.Extents {
				m[e.Digest] = extentLoc{host: ocispec.Descriptor{MediaType: rec.Host.MediaType, Digest: rec.Host.Digest, Size: rec.Host.Size}, off: e.Offset, size: e.Size}
			}
			return nil
		})
		if err != nil {
			return extentLoc{}, false, err
		}
		x.m, x.stamp, x.loaded = m, stamp, ok
	}
	loc, ok := x.m[d]
	return loc, ok, nil
}

// BlobFile is where a blob's bytes are on disk: a file of its own (Offset
// 0), or a range of the file of the blob that holds it (an extent).
type BlobFile struct {
	File   *os.File
	Offset int64
	Size   int64
	// Path names the bytes in messages: the file, and the offset of an
	// extent ("blobs/sha256/<host> at offset N").
	Path string
	// Host is the blob whose file this is (the blob itself, or an
	// extent's host).
	Host digest.Digest
	own  bool
}

// Reader reads the blob's bytes (at offsets: several readers may share
// the file).
func (b *BlobFile) Reader() *io.SectionReader { return io.NewSectionReader(b.File, b.Offset, b.Size) }

// reader reads the blob from its start: a blob file of its own as it is
// (a read past its size is how a verifier sees a file that grew), an
// extent through a section of its host.
func (b *BlobFile) reader() io.Reader {
	if b.own {
		return b.File
	}
	return b.Reader()
}

// Close closes the file.
func (b *BlobFile) Close() error { return b.File.Close() }

// OpenFile opens the bytes of the blob desc where they lie, without hashing
// them (like OpenUnverified), for callers that need a file: to send it with
// sendfile, to read it at offsets. The sizes are checked: of the blob's
// file, or of an extent's host file.
func (s *Store) OpenFile(desc ocispec.Descriptor) (*BlobFile, error) {
	p, err := s.blobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d: %w", desc.Digest, desc.Size, ErrInvalid)
	}
	f, err := os.Open(p)
	switch {
	case err == nil:
		if fi, err := f.Stat(); err == nil && fi.Size() != desc.Size {
			f.Close()
			return nil, fmt.Errorf("blob %s (%s): file is %d bytes, declared %d: %w", desc.Digest, p, fi.Size(), desc.Size, ErrSizeMismatch)
		}
		return &BlobFile{File: f, Size: desc.Size, Path: p, Host: desc.Digest, own: true}, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	loc, ok, err := s.extentOf(desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if !ok {
		return nil, fmt.Errorf("blob %s (%s): %w", desc.Digest, p, ErrNotFound)
	}
	hp := s.BlobPath(loc.host.Digest)
	where := fmt.Sprintf("%s at offset %d", hp, loc.off)
	f, err = os.Open(hp)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob %s (%s; its host is gone): %w", desc.Digest, where, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s (%s): %w", desc.Digest, where, err)
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() != loc.host.Size {
		err = fmt.Errorf("host file is %d bytes, its record says %d: %w", fi.Size(), loc.host.Size, ErrSizeMismatch)
	}
	if err == nil && loc.off > loc.host.Size-desc.Size {
		err = fmt.Errorf("%d bytes do not fit at offset %d of the %d-byte host: %w", desc.Size, loc.off, loc.host.Size, ErrSizeMismatch)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %s (%s): %w", desc.Digest, where, err)
	}
	return &BlobFile{File: f, Offset: loc.off, Size: desc.Size, Path: where, Host: loc.host.Digest}, nil
}

// BlobSize returns the size of the blob d if the store has its bytes (a
// file of its own or an extent), without hashing them: for planning. Reads
// still verify.
func (s *Store) BlobSize(ctx context.Context, d digest.Digest) (int64, bool, error) {
	p, err := s.blobPath(d)
	if err != nil {
		return 0, false, err
	}
	fi, err := os.Stat(p)
	switch {
	case err == nil:
		return fi.Size(), fi.Mode().IsRegular(), nil
	case !errors.Is(err, os.ErrNotExist):
		return 0, false, fmt.Errorf("blob %s: %w", d, err)
	}
	loc, ok, err := s.extentOf(d)
	if err != nil || !ok {
		return 0, false, err
	}
	hfi, err := os.Stat(s.BlobPath(loc.host.Digest))
	if err != nil || hfi.Size() != loc.host.Size {
		return 0, false, nil
	}
	return loc.size, true, nil
}

// presentExtent is present for a blob without a file of its own: its
// extent, hashed once per host file identity (the trust cache), or not at
// all while its host's verified record stamps the extents (trust.go).
func (s *Store) presentExtent(ctx context.Context, d digest.Digest, size int64) (bool, error) {
	loc, ok, err := s.extentOf(d)
	if err != nil || !ok {
		return false, err
	}
	hp := s.BlobPath(loc.host.Digest)
	fi, err := os.Stat(hp)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != loc.host.Size || (size >= 0 && loc.size != size) {
		return false, nil
	}
	if s.trust.ok(d, fi) || s.extentsTrusted(loc.host.Digest, fi) {
		s.trust.add(d, fi)
		return true, nil
	}
	f, err := os.Open(hp)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	defer f.Close()
	// Trust the identity of the file hashed, as present does.
	if fi, err = f.Stat(); err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	if fi.Size() != loc.host.Size {
		return false, nil
	}
	got, err := hashReader(ctx, io.NewSectionReader(f, loc.off, loc.size), d.Algorithm())
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("blob %s (%s at offset %d): %w", d, hp, loc.off, err)
	}
	if got != d {
		s.trust.drop(d)
		return false, nil
	}
	s.trust.add(d, fi)
	return true, nil
}

// StartExtent marks the start of a blob inside the one being written: the
// bytes written until EndExtent are checked against it there, and, once
// this blob is committed through a Batch, recorded as an extent of it.
func (w *BlobWriter) StartExtent() error {
	if w.done {
		return fmt.Errorf("extent in %s: blob writer is closed", w.t.Name())
	}
	if w.ext != nil {
		return fmt.Errorf("extent in %s: one is already open at offset %d", w.t.Name(), w.extStart)
	}
	if w.extHash == nil {
		w.extHash = newDigester(digest.SHA256.Hash())
	} else {
		w.extHash.Reset()
	}
	w.ext, w.extStart = w.extHash, w.t.Size()
	return nil
}

// EndExtent checks that the bytes written since StartExtent are exactly
// want (size and digest) and records them as an extent of this blob.
func (w *BlobWriter) EndExtent(want ocispec.Descriptor) error {
	if w.ext == nil {
		return fmt.Errorf("extent %s in %s: none was started", want.Digest, w.t.Name())
	}
	h := w.ext
	w.ext = nil
	if want.Digest.Algorithm() != digest.SHA256 {
		return fmt.Errorf("extent %s: %w: only sha256 extents", want.Digest, ErrInvalid)
	}
	if n := w.t.Size() - w.extStart; n != want.Size {
		return fmt.Errorf("extent %s at offset %d of %s: %d bytes, want %d: %w", want.Digest, w.extStart, w.t.Name(), n, want.Size, ErrSizeMismatch)
	}
	if got := h.Digest(); got != want.Digest {
		return fmt.Errorf("extent %s at offset %d of %s: content hashes to %s: %w", want.Digest, w.extStart, w.t.Name(), got, ErrDigestMismatch)
	}
	w.extents = append(w.extents, Extent{Digest: want.Digest, Size: want.Size, Offset: w.extStart})
	return nil
}

// AddExtent records that the bytes already written at offset are the blob
// want, once they hash to it: read back from the temp file (a writer that
// learns where its blobs lie only after writing them, as a pull that
// dehydrates a standard layer does).
func (w *BlobWriter) AddExtent(ctx context.Context, want ocispec.Descriptor, offset int64) error {
	if w.done {
		return fmt.Errorf("extent %s in %s: blob writer is closed", want.Digest, w.t.Name())
	}
	if want.Digest.Algorithm() != digest.SHA256 {
		return fmt.Errorf("extent %s: %w: only sha256 extents", want.Digest, ErrInvalid)
	}
	if want.Size < 0 || offset < 0 || offset > w.t.Size()-want.Size {
		return fmt.Errorf("extent %s: %d bytes at offset %d of the %d written to %s: %w", want.Digest, want.Size, offset, w.t.Size(), w.t.Name(), ErrSizeMismatch)
	}
	got, err := hashReader(ctx, io.NewSectionReader(w.t.OS(), offset, want.Size), digest.SHA256)
	if err != nil {
		return fmt.Errorf("extent %s at offset %d of %s: %w", want.Digest, offset, w.t.Name(), err)
	}
	if got != want.Digest {
		return fmt.Errorf("extent %s at offset %d of %s: content hashes to %s: %w", want.Digest, offset, w.t.Name(), got, ErrDigestMismatch)
	}
	w.extents = append(w.extents, Extent{Digest: want.Digest, Size: want.Size, Offset: offset})
	return nil
}

// sealExtents writes the record of the extents of host (a batch item's
// blob) into a sealed temp file, renamed into place after its host.
func (s *Store) sealExtents(host ocispec.Descriptor, exts []Extent) (string, error) {
	rec := extentRecord{Host: ocispec.Descriptor{MediaType: host.MediaType, Digest: host.Digest, Size: host.Size}, Extents: exts}
	sort.Slice(rec.Extents, func(a, b int) bool { return rec.Extents[a].Offset < rec.Extents[b].Offset })
	if err := validExtents(&rec); err != nil {
		return "", err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	return s.sealTemp("extents", b, 0o444, fsutil.Deferred)
}

// extractExtents gives every extent of the record at p that live keeps a
// blob file of its own (copied from the host and verified), so that gc can
// sweep the host; then it removes the record. An extent whose bytes do not
// verify is left (verify reports it).
func (s *Store) extractExtents(ctx context.Context, p string, rec *extentRecord, live map[digest.Digest]ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	var out []ocispec.Descriptor
	hp := s.BlobPath(rec.Host.Digest)
	f, err := os.Open(hp)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if f != nil {
		defer f.Close()
		for _, e := range rec.Extents {
			d, ok := live[e.Digest]
			if !ok {
				continue
			}
			if _, err := os.Stat(s.BlobPath(e.Digest)); err == nil {
				continue // a file of its own already
			}
			desc := ocispec.Descriptor{MediaType: d.MediaType, Digest: e.Digest, Size: e.Size}
			if err := s.pushFile(ctx, desc, io.NewSectionReader(f, e.Offset, e.Size)); err != nil {
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				continue
			}
			out = append(out, desc)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return out, fmt.Errorf("gc: remove %s: %w", p, err)
	}
	return out, nil
}

// pushFile writes r into a blob file of its own, checked against desc,
// whatever the store holds (Push would find the extent present).
func (s *Store) pushFile(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	w, err := s.newWriter(desc.Digest.Algorithm())
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := io.Copy(w, ctxReader{ctx, r}); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	return w.commit(ctx, desc)
}
