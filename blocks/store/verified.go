package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// verifiedDir holds one record per blob that VerifyBlob hashed and found
// intact: verified/<hex> is the blob file's identity at that moment.
const verifiedDir = "blockfile/verified"

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
		var r verifiedRecord
		if data, err := readSmall(rec, maxRecordSize); err == nil && json.Unmarshal(data, &r) == nil &&
			r.Digest == d && r.File == before {
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
	data, _ := json.Marshal(verifiedRecord{Digest: d, File: before})
	if err := os.MkdirAll(s.path(verifiedDir), 0o755); err != nil {
		return false, nil // a cache we cannot write only costs time
	}
	// Not durable: a lost record only means hashing the blob once more.
	_ = s.replaceFile(filepath.ToSlash(filepath.Join(verifiedDir, d.Encoded())), data, false)
	return false, nil
}

// forgetVerified drops the records of blobs that are gone (gc).
func (s *Store) forgetVerified(d digest.Digest) {
	_ = os.Remove(s.path(verifiedDir + "/" + d.Encoded())) // absent is fine
}
