package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// Sentinel errors; every error that wraps one names the digest and path concerned.
var (
	// ErrNotFound: the blob, tag or record is not in the store.
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: content does not hash to the digest it was asked for.
	ErrDigestMismatch = fsutil.ErrDigest
	// ErrSizeMismatch: content is shorter or longer than its descriptor says.
	ErrSizeMismatch = fsutil.ErrSize
	// ErrTooLarge: a document is larger than the cap for its kind.
	ErrTooLarge = errors.New("too large")
	// ErrInvalid: a digest, name or descriptor is malformed.
	ErrInvalid = errors.New("invalid")
	// ErrNoStore: the directory is not a store (Open never creates one).
	ErrNoStore = errors.New("no store")
	// ErrProblems: Verify found problems (each was reported).
	ErrProblems = errors.New("store has problems")
)

// Limits for documents that are read whole into memory.
const (
	// MaxJSONSize caps GetJSON (manifests, indexes, configs, tree documents).
	MaxJSONSize = 16 << 20
	// maxIndexSize caps index.json, which grows with the number of tags.
	maxIndexSize = 64 << 20
	// maxRecordSize caps a member or block record file (one descriptor).
	maxRecordSize = 64 << 10
)

// Paths inside the store root. Everything blockfile adds beside the OCI image
// layout lives under blockfile/, so tools that copy the layout (skopeo, oras,
// umoci) see a plain layout and ignore the rest.
const (
	layoutFile   = ocispec.ImageLayoutFile // "oci-layout"
	indexFile    = "index.json"
	blobsDir     = ocispec.ImageBlobsDir // "blobs"
	extraDir     = "blockfile"
	ingestDir    = "blockfile/ingest"    // temp files; same filesystem as blobs/ so rename is atomic
	membersDir   = "blockfile/members"   // members/<compression>/<raw hex>: member descriptor JSON
	blockRootDir = "blockfile/blocks"    // blocks/<hex>: descriptor JSON of a block added by `block add` (a gc root)
	referrersDir = "blockfile/referrers" // referrers/<subject hex>/<referrer hex>: descriptor JSON (see referrers.go)
	lockFile     = "blockfile/index.lock"
)

// Store is an OCI image layout on the local filesystem. Blob writes are verified,
// atomic and idempotent, so several goroutines and processes can share a store.
// The zero value is not usable; call Open.
type Store struct {
	root string
	// mu serialises index.json updates inside this process; the flock on
	// lockFile serialises them across processes.
	mu sync.Mutex
	// leases held through this Store (see Lease).
	leases leases
	// trust remembers which blob files this process has hashed (see present).
	trust  trustCache
	stamps stampCache // hosts whose extents are trusted (trust.go)
	// memberChecks remembers member records checked by LookupMember.
	memberChecks memberChecks
	// extents indexes the extent records (extents.go).
	extents extentIndex
}

// DefaultRoot is the store used when none is given: $BLOCKFILE_STORE, else
// $XDG_DATA_HOME/blockfile/store, else ~/.local/share/blockfile/store.
func DefaultRoot() string {
	if d := os.Getenv("BLOCKFILE_STORE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "blockfile", "store")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		// No home directory (a bare container): fall back to a relative path
		// rather than failing, so --store remains the only thing to fix.
		return filepath.Join(".blockfile", "store")
	}
	return filepath.Join(home, ".local", "share", "blockfile", "store")
}

// Open opens the existing store at root. A root without an oci-layout file
// is not a store: Open fails with ErrNoStore ("no store at DIR") rather than
// create one, so a mistyped --store is reported, not silently made. Verbs
// that write a new store call Create. Opening is safe to race with other
// processes opening or writing the same root.
func Open(root string) (*Store, error) {
	abs, err := absRoot(root)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(abs, layoutFile)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no store at %s: %w", abs, ErrNoStore)
	} else if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	return open(abs)
}

// Create opens the store at root, creating it if it does not exist: an
// absent or empty directory becomes an empty store. A non-empty directory
// that is not an OCI image layout is refused (ErrNoStore), so a store is
// never spread over unrelated files.
func Create(root string) (*Store, error) {
	abs, err := absRoot(root)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(abs, layoutFile)); errors.Is(err, os.ErrNotExist) {
		// Entries a store has are allowed: another process may be creating
		// the same store right now (open makes the directories first).
		ents, _ := os.ReadDir(abs)
		for _, e := range ents {
			switch e.Name() {
			case blobsDir, extraDir, indexFile:
				continue
			}
			return nil, fmt.Errorf("create store %s: the directory holds %s and is not a store (no %s): %w", abs, blocks.Quote(e.Name()), layoutFile, ErrNoStore)
		}
	}
	return open(abs)
}

func absRoot(root string) (string, error) {
	if root == "" {
		return "", fmt.Errorf("open store: empty path: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("open store %s: %w", root, err)
	}
	return abs, nil
}

// open makes sure the layout at abs is complete (creating what is missing)
// and checks its version.
func open(abs string) (*Store, error) {
	s := &Store{root: abs}
	for _, d := range []string{
		filepath.Join(blobsDir, digest.SHA256.String()), ingestDir, membersDir, blockRootDir,
	} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("open store %s: %w", abs, err)
		}
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err := s.createIfAbsent(layoutFile, layout); err != nil {
		return nil, err
	}
	if err := s.checkLayout(); err != nil {
		return nil, err
	}
	// The gc lock exists from the start, so that a lease (a writer that
	// then fails its checks) leaves the store exactly as it found it.
	for _, f := range []string{gcLockFile, gcTurnFile} {
		if err := s.createIfAbsent(f, nil); err != nil {
			return nil, err
		}
	}
	empty, _ := json.Marshal(newIndex(nil))
	if err := s.createIfAbsent(indexFile, empty); err != nil {
		return nil, err
	}
	return s, nil
}

// Root returns the absolute path of the store.
func (s *Store) Root() string { return s.root }

// BlobPath returns where the blob d lives (or would live): blobs/<alg>/<hex>.
// d must be a valid digest; use Exists or Fetch for untrusted digests.
func (s *Store) BlobPath(d digest.Digest) string {
	return filepath.Join(s.root, blobsDir, d.Algorithm().String(), d.Encoded())
}

// blobPath is BlobPath for untrusted digests: it refuses anything that is not
// a well-formed digest of an available algorithm, so no path can escape.
func (s *Store) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("digest %q: %w: %v", d, ErrInvalid, err)
	}
	return s.BlobPath(d), nil
}

// Exists reports whether the blob d is present and intact. A blob file is
// trusted only once its content has been hashed: the first Exists (or Push)
// of a blob in a process hashes it, later ones find it in a cache keyed by
// the file's identity (inode, size, mtime, ctime), as do blobs this process
// wrote. A blob that does not hash to its name is reported absent, so the
// next Push of it replaces it with good content.
func (s *Store) Exists(ctx context.Context, d digest.Digest) (bool, error) {
	if _, err := s.blobPath(d); err != nil {
		return false, err
	}
	return s.present(ctx, d, -1)
}

// Fetch opens the blob desc. The reader verifies while streaming: reading past
// desc.Size, or reaching EOF with the wrong size or digest, returns an error
// naming the digest and the blob file.
func (s *Store) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	bf, err := s.OpenFile(desc)
	if err != nil {
		return nil, err
	}
	return &readCloser{Reader: newVerifier(ctxReader{ctx, bf.reader()}, desc, bf.Path), c: bf}, nil
}

type readCloser struct {
	io.Reader
	c io.Closer
}

func (r *readCloser) Close() error { return r.c.Close() }

// PutJSON stores v encoded as JSON and returns its descriptor.
func (s *Store) PutJSON(ctx context.Context, mediaType string, v any) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode %s: %w", mediaType, err)
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := s.Push(ctx, desc, bytes.NewReader(b)); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// GetJSON reads the blob desc, verifies it, and decodes it into v. Documents
// larger than MaxJSONSize are refused before anything is read.
func (s *Store) GetJSON(ctx context.Context, desc ocispec.Descriptor, v any) error {
	if desc.Size > MaxJSONSize {
		return fmt.Errorf("blob %s: %d bytes exceeds the %d-byte limit for JSON documents: %w", desc.Digest, desc.Size, MaxJSONSize, ErrTooLarge)
	}
	rc, err := s.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	// The verifier stops at desc.Size+1 bytes, so ReadAll is bounded.
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("blob %s (%s): decode %s: %w", desc.Digest, s.BlobPath(desc.Digest), desc.MediaType, err)
	}
	return nil
}

// Walk calls fn for every blob present, with its digest and size on disk.
// Files under blobs/ whose names are not digests are skipped.
func (s *Store) Walk(ctx context.Context, fn func(digest.Digest, int64) error) error {
	algs, err := os.ReadDir(filepath.Join(s.root, blobsDir))
	if err != nil {
		return fmt.Errorf("walk store %s: %w", s.root, err)
	}
	for _, a := range algs {
		alg := digest.Algorithm(a.Name())
		if !a.IsDir() || !alg.Available() {
			continue
		}
		dir := filepath.Join(s.root, blobsDir, a.Name())
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("walk store %s: %w", dir, err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			d := digest.NewDigestFromEncoded(alg, e.Name())
			if d.Validate() != nil || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, os.ErrNotExist) {
				continue // removed meanwhile (gc in another process)
			}
			if err != nil {
				return fmt.Errorf("walk store: %s: %w", filepath.Join(dir, e.Name()), err)
			}
			if err := fn(d, fi.Size()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) path(rel string) string { return filepath.Join(s.root, filepath.FromSlash(rel)) }

// createIfAbsent atomically creates rel with content b unless it exists: the
// content is written to a temp file and hard-linked into place, so a reader
// never sees a partial file and a racing creator's file is kept.
func (s *Store) createIfAbsent(rel string, b []byte) error {
	dst := s.path(rel)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	tmp, err := s.sealTemp("file", b, 0o644, fsutil.Durable)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, dst); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	return nil
}

// replaceFile atomically replaces rel with content b (temp + rename). If
// durable is set the file and the rename are fsynced; otherwise a crash may
// leave the old content, or an empty file, under rel.
func (s *Store) replaceFile(rel string, b []byte, durable bool) error {
	return fsutil.WriteFile(s.path(ingestDir), s.path(rel), b, 0o644, durable)
}

// sealTemp writes b to a new temp file of kind in the ingest directory,
// sealed with mode and durability d, and returns its name (to rename).
func (s *Store) sealTemp(kind string, b []byte, mode os.FileMode, d fsutil.Durability) (string, error) {
	t, err := fsutil.Create(s.path(ingestDir), kind)
	if err != nil {
		return "", fmt.Errorf("store %s: %w", s.root, err)
	}
	if _, err := t.Write(b); err != nil {
		t.Close()
		return "", err
	}
	return t.Seal(mode, d)
}

// readSmall reads a small file whole, refusing files over limit.
func readSmall(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: more than %d bytes: %w", p, limit, ErrTooLarge)
	}
	return b, nil
}

func (s *Store) checkLayout() error {
	p := s.path(layoutFile)
	b, err := readSmall(p, maxRecordSize)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	var l ocispec.ImageLayout
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("open store: %s: %w", p, err)
	}
	if l.Version != ocispec.ImageLayoutVersion {
		return fmt.Errorf("open store: %s: image layout version %q, want %q: %w", p, l.Version, ocispec.ImageLayoutVersion, ErrInvalid)
	}
	return nil
}

func syncDir(dir string) error { return fsutil.SyncDir(dir) }

// ctxReader makes long copies stop when ctx is cancelled.
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
