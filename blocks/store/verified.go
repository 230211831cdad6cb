package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// verifiedDir holds one record per blob that was hashed (VerifyBlob, a
// presence check) or written (a commit) and found intact: verified/<hex> is
// the blob file's identity at that moment, and for a blob that hosts
// extents, the identity its extents record had when they were checked.
// Every presence check of a blob of at least trustRecordMin bytes trusts a
// record whose identities still match, so a new process (every CLI verb)
// does not hash the store's layers again to learn that they are there: an
// upgrade pull of a 235 MB image spent 0.35 s of its 0.45 s doing that. A
// lost or stale record only costs hashing once more.
const verifiedDir = "blockfile/verified"

// trustRecordMin is the smallest blob whose verified record presence
// checks read and write: hashing a smaller one costs less than the record.
const trustRecordMin = 256 << 10

// fileKey identifies one version of a file: the same inode with the same
// size, modification time and change time. Any write, truncation,
// replacement, chmod or touch changes ctime, which no user tool can set back,
// so an unchanged key means unchanged bytes (short of someone editing the
// disk under the filesystem).
type fileKey struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtimeNs"`
	Ctime int64  `json:"ctimeNs"`
}

type verifiedRecord struct {
	Digest digest.Digest `json:"digest"`
	File   fileKey       `json:"file"`
	// Extents, on a host's record, is the identity of its extents record
	// when every extent it lists was checked in the host (written by a
	// Batch that hashed each, or hashed by verify).
	Extents *fileKey `json:"extents,omitempty"`
}

// verifiedOnDisk returns the record of d if it names the file identity key.
func (s *Store) verifiedOnDisk(d digest.Digest, key fileKey) (verifiedRecord, bool) {
	var r verifiedRecord
	data, err := readSmall(s.path(verifiedDir+"/"+d.Encoded()), maxRecordSize)
	if err != nil || json.Unmarshal(data, &r) != nil || r.Digest != d || r.File != key {
		return verifiedRecord{}, false
	}
	return r, true
}

// writeVerified records r (not durable: a lost record only means hashing
// the blob once more).
func (s *Store) writeVerified(r verifiedRecord) {
	data, err := json.Marshal(r)
	if err != nil {
		return
	}
	if err := os.MkdirAll(s.path(verifiedDir), 0o755); err != nil {
		return // a cache we cannot write only costs time
	}
	_ = s.replaceFile(filepath.ToSlash(filepath.Join(verifiedDir, r.Digest.Encoded())), data, false)
}

// VerifyBlob checks that the blob d in the store hashes to d. A blob whose
// file has not changed (same inode, size, mtime and ctime) since it was last
// verified is not read again; cached says so. This is what lets an
// in-process build trust a store's blocks on every warm build without
// re-reading hundreds of MB: BuildKit does not hash local files itself.
//
// A mismatch returns an error wrapping ErrDigestMismatch that names the
// path; a missing blob one wrapping os.ErrNotExist.
func (s *Store) VerifyBlob(ctx context.Context, d digest.Digest) (cached bool, err error) {
	p, err := s.blobPath(d)
	if err != nil {
		return false, err
	}
	before, ok, err := statKey(p)
	if err != nil {
		return false, fmt.Errorf("block %s: %w", d, err)
	}
	rec := s.path(verifiedDir + "/" + d.Encoded())
	if ok {
		if _, ok := s.verifiedOnDisk(d, before); ok {
			return true, nil
		}
	}
	got, err := hashFile(ctx, p, d.Algorithm())
	if err != nil {
		return false, fmt.Errorf("block %s: read %s: %w", d, p, err)
	}
	if got != d {
		os.Remove(rec)
		return false, fmt.Errorf("block %s: the bytes at %s hash to %s: %w", d, p, got, ErrDigestMismatch)
	}
	// Record only what was hashed: the file must not have changed meanwhile.
	after, ok2, err := statKey(p)
	if err != nil || !ok || !ok2 || after != before {
		return false, nil
	}
	s.writeVerified(verifiedRecord{Digest: d, File: before})
	return false, nil
}

// forgetVerified drops what says d was verified: its record (a blob gone,
// gc; or found corrupt, verify), and this process's trust in it and in the
// extents it hosts. What is still there is hashed again.
func (s *Store) forgetVerified(d digest.Digest) {
	_ = os.Remove(s.path(verifiedDir + "/" + d.Encoded())) // absent is fine
	s.trust.drop(d)
	s.stamps.drop(d)
}

// fileKeyOf is fi's identity; ok is false where the platform gives no
// inode and change time (then nothing is trusted without hashing).
func fileKeyOf(fi os.FileInfo) (fileKey, bool) {
	id, ok := fsutil.IDOf(fi)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{Dev: id.Dev, Ino: id.Ino, Size: id.Size, Mtime: id.Mtime, Ctime: id.Ctime}, true
}

// statKey returns the identity of the regular file p (fileKeyOf).
func statKey(p string) (fileKey, bool, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return fileKey{}, false, err
	}
	if !fi.Mode().IsRegular() {
		return fileKey{}, false, fmt.Errorf("%s: not a regular file", p)
	}
	k, ok := fileKeyOf(fi)
	return k, ok, nil
}
