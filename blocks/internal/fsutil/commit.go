package fsutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors of a blob commit; callers wrap them into their own sentinels.
var (
	ErrSize   = errors.New("size mismatch")
	ErrDigest = errors.New("digest mismatch")
)

// File is a temp file on its way to becoming a file under its final name.
// Writes start the write-back of the data early (where the OS allows it), so
// the sync at commit finds little left to flush. Close (or a failed Commit)
// removes it.
type File struct {
	f      *os.File
	n      int64 // bytes written
	behind int64 // bytes whose write-back was started
	done   bool
}

// writeBehindChunk is how much data is written before its write-back is
// started: large enough that the hint costs nothing, small enough that the
// fsync of a layer of hundreds of megabytes does not wait for all of it.
const writeBehindChunk = 8 << 20

// Create makes a new temp file in dir named for kind and its owner (see
// TempPattern). dir must exist.
func Create(dir, kind string) (*File, error) {
	f, err := os.CreateTemp(dir, TempPattern(kind))
	if err != nil {
		return nil, err
	}
	return &File{f: f}, nil
}

// Name is the temp file's path.
func (t *File) Name() string { return t.f.Name() }

// Size is the number of bytes written so far.
func (t *File) Size() int64 { return t.n }

// OS returns the underlying file, for callers that seek or read it back
// before committing (the bytes they write through it are not counted).
func (t *File) OS() *os.File { return t.f }

// Write appends p.
func (t *File) Write(p []byte) (int, error) {
	if t.done {
		return 0, fmt.Errorf("write %s: file is closed", t.f.Name())
	}
	n, err := t.f.Write(p)
	t.n += int64(n)
	if t.n-t.behind >= writeBehindChunk {
		startWriteback(t.f, t.behind, t.n-t.behind)
		t.behind = t.n
	}
	if err != nil {
		return n, fmt.Errorf("write %s: %w", t.f.Name(), err)
	}
	return n, nil
}

// Check compares what was written with want: the size always, the digest
// when got is not empty. got is the digest of the written bytes as the
// caller computed it while writing; "" means the caller's producer checked
// the bytes against want itself (hydrate checks the whole layer it writes).
func (t *File) Check(want ocispec.Descriptor, got digest.Digest) error {
	if t.n != want.Size {
		return fmt.Errorf("blob %s: got %d bytes, want %d: %w", want.Digest, t.n, want.Size, ErrSize)
	}
	if got != "" && got != want.Digest {
		return fmt.Errorf("blob %s: content hashes to %s: %w", want.Digest, got, ErrDigest)
	}
	return nil
}

// CommitBlob checks the file against want (see Check) and commits it as a
// read-only blob at dst. An existing file at dst is replaced: what is there
// may be damaged, and readers that have it open keep their copy.
func (t *File) CommitBlob(dst string, want ocispec.Descriptor, got digest.Digest) error {
	if t.done {
		return fmt.Errorf("commit %s: file is closed", want.Digest)
	}
	if err := t.Check(want, got); err != nil {
		t.Close()
		return err
	}
	if err := t.Commit(dst, 0o444); err != nil {
		return fmt.Errorf("blob %s: %w", want.Digest, err)
	}
	return nil
}

// Durability says how Seal makes a file durable.
type Durability int

const (
	// Durable: synced before Seal returns.
	Durable Durability = iota
	// Deferred: write-back started; durable once the caller has called
	// SyncFS on the file system (one call for a batch of files). Where the
	// OS has no SyncFS, Seal syncs the file itself.
	Deferred
	// Volatile: not synced (caches that are rebuilt when lost).
	Volatile
)

// Commit makes the file durable, sets its mode, renames it to dst and
// syncs dst's directory. On error the temp file is removed.
func (t *File) Commit(dst string, mode os.FileMode) error {
	p, err := t.Seal(mode, Durable)
	if err != nil {
		return err
	}
	if err := Rename(p, dst); err != nil {
		os.Remove(p)
		return err
	}
	return SyncDir(filepath.Dir(dst))
}

// Seal sets the file's mode and closes it, leaving it under its temp name
// for a later Rename; it returns that name. On error the temp file is
// removed.
func (t *File) Seal(mode os.FileMode, d Durability) (string, error) {
	if t.done {
		return "", fmt.Errorf("seal %s: file is closed", t.f.Name())
	}
	t.done = true
	name := t.f.Name()
	fail := func(what string, err error) (string, error) {
		t.f.Close()
		os.Remove(name)
		return "", fmt.Errorf("%s %s: %w", what, name, err)
	}
	switch {
	case d == Durable, d == Deferred && !HaveSyncFS:
		if err := fullSync(t.f); err != nil {
			return fail("sync", err)
		}
	case d == Deferred:
		startWriteback(t.f, 0, 0)
	}
	if err := t.f.Chmod(mode); err != nil {
		return fail("chmod", err)
	}
	if err := t.f.Close(); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("close %s: %w", name, err)
	}
	return name, nil
}

// Close discards the file unless it was committed or sealed. It is safe to
// call more than once.
func (t *File) Close() error {
	if t.done {
		return nil
	}
	t.done = true
	t.f.Close()
	if err := os.Remove(t.f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("discard %s: %w", t.f.Name(), err)
	}
	return nil
}

// Rename moves a sealed temp file to dst, creating dst's directory.
func Rename(tmp, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("rename into %s: %w", dst, err)
	}
	return nil
}

// WriteFile atomically replaces p with data: a temp file in tmpDir (on
// p's file system; "" is p's directory), then Rename, then, if durable,
// a sync of the file before the rename and of p's directory after it.
// Without durable a crash may leave the old content or an empty file (for
// caches that are rebuilt when lost).
func WriteFile(tmpDir, p string, data []byte, mode os.FileMode, durable bool) error {
	if tmpDir == "" {
		tmpDir = filepath.Dir(p)
	}
	t, err := Create(tmpDir, "file")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if _, err := t.Write(data); err != nil {
		t.Close()
		return err
	}
	d := Volatile
	if durable {
		d = Durable
	}
	name, err := t.Seal(mode, d)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Rename(name, p); err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", p, err)
	}
	if durable {
		return SyncDir(filepath.Dir(p))
	}
	return nil
}

// SyncDir fsyncs a directory, so that renames into it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
