package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// StaleTempAge is how old a temp file in the ingest directory must be before
// gc removes it: older than any write still in progress.
const StaleTempAge = time.Hour

// GCOptions tune GCWithOptions.
type GCOptions struct {
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// DropBlocks also drops blocks recorded by `block add` (RecordBlock) that
	// no image references: their records, and then their blobs.
	DropBlocks bool
}

// GCResult is what a gc removed (or, in a dry run, would remove).
type GCResult struct {
	Removed       []ocispec.Descriptor // blobs; MediaType is set only when known
	BytesFreed    int64                // sum of the blob sizes in Removed
	TempFiles     []string             // stale temp files
	MemberRecords []string             // member records whose member is gone
	BlockRecords  []digest.Digest      // block records dropped (DropBlocks)
	// ReferrerRecords are the referrer directories dropped because their
	// subject is swept.
	ReferrerRecords []string
}

// GC removes every blob that no index.json entry (through manifests,
// indexes, the dev.blockfile.standard image and tree documents) and no
// recorded block references. See GCWithOptions.
func (s *Store) GC(ctx context.Context, dryRun bool) (removed []ocispec.Descriptor, err error) {
	res, err := s.GCWithOptions(ctx, GCOptions{DryRun: dryRun})
	if err != nil {
		return nil, err
	}
	return res.Removed, nil
}

// GCWithOptions marks from every index.json entry and every recorded block
// (unless DropBlocks), then from the recorded referrers of every marked
// blob (AddReferrer), and sweeps every blob not marked. It also removes temp
// files older than StaleTempAge and member records whose member was removed.
//
// It holds the index lock throughout, so tags cannot change under it. It
// fails, removing nothing, if a manifest, index or tree it must read is
// missing or corrupt: children it cannot list would be swept. Blobs pushed by
// a concurrent export that has not tagged yet are not protected; do not run
// gc while exporting into the same store.
func (s *Store) GCWithOptions(ctx context.Context, opts GCOptions) (*GCResult, error) {
	unlock, err := s.lockIndex(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	roots, err := s.roots()
	if err != nil {
		return nil, err
	}
	recorded, err := s.RecordedBlocks(ctx)
	if err != nil {
		return nil, err
	}
	if !opts.DropBlocks {
		roots = append(roots, recorded...)
	}
	live, err := s.Reachable(ctx, roots...)
	if err != nil {
		return nil, fmt.Errorf("gc %s: %w (nothing removed; run blockfile verify)", s.root, err)
	}

	// Referrers (signatures, attestations) live while their subject does.
	deadSubjects, err := s.keepReferrers(ctx, live)
	if err != nil {
		return nil, fmt.Errorf("gc %s: %w (nothing removed; run blockfile verify)", s.root, err)
	}

	res := &GCResult{}
	for _, subj := range deadSubjects {
		p := s.path(path.Join(referrersDir, subj.Encoded()))
		res.ReferrerRecords = append(res.ReferrerRecords, p)
		if !opts.DryRun {
			if err := os.RemoveAll(p); err != nil {
				return res, fmt.Errorf("gc: remove %s: %w", p, err)
			}
		}
	}
	if opts.DropBlocks {
		for _, r := range recorded {
			if _, ok := live[r.Digest]; ok {
				continue // an image uses it: keep the record too
			}
			res.BlockRecords = append(res.BlockRecords, r.Digest)
			if !opts.DryRun {
				if err := s.ForgetBlock(ctx, r.Digest); err != nil {
					return res, err
				}
			}
		}
	}
	known := map[digest.Digest]string{}
	for _, r := range recorded {
		known[r.Digest] = r.MediaType
	}

	err = s.Walk(ctx, func(d digest.Digest, size int64) error {
		if _, ok := live[d]; ok {
			return nil
		}
		res.Removed = append(res.Removed, ocispec.Descriptor{MediaType: known[d], Digest: d, Size: size})
		res.BytesFreed += size
		if opts.DryRun {
			return nil
		}
		if err := os.Remove(s.BlobPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("gc: remove %s: %w", s.BlobPath(d), err)
		}
		s.forgetVerified(d)
		return nil
	})
	if err != nil {
		return res, err
	}

	// Member records whose member is no longer present.
	for _, c := range []blocks.Compression{blocks.Gzip, blocks.Zstd} {
		err := s.eachMemberRecord(ctx, c, func(rel string, m ocispec.Descriptor, rerr error) error {
			if rerr == nil {
				if _, ok := live[m.Digest]; ok {
					return nil
				}
			}
			// Unreadable, or its member is swept by this gc (or already gone).
			res.MemberRecords = append(res.MemberRecords, s.path(rel))
			if !opts.DryRun {
				if err := os.Remove(s.path(rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("gc: remove %s: %w", s.path(rel), err)
				}
			}
			return nil
		})
		if err != nil {
			return res, err
		}
	}

	// Temp files left by interrupted writes.
	ents, err := os.ReadDir(s.path(ingestDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("gc: list %s: %w", s.path(ingestDir), err)
	}
	now := time.Now()
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || now.Sub(fi.ModTime()) < StaleTempAge {
			continue
		}
		p := s.path(path.Join(ingestDir, e.Name()))
		res.TempFiles = append(res.TempFiles, p)
		if !opts.DryRun {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return res, fmt.Errorf("gc: remove %s: %w", p, err)
			}
		}
	}
	return res, nil
}
