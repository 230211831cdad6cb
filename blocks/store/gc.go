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
	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// StaleTempAge is how old a temp file in the ingest directory must be before
// it is removed when its owner cannot be judged (another host sharing the
// store, or a name that does not say): older than any write still in
// progress. Files of a process of this host that is gone are removed after
// a minute (see SweepTemp).
const StaleTempAge = fsutil.UnknownOwnerAge

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
	// ExtentRecords are the extent records dropped because their host is
	// swept (or gone, or the record unreadable); Extracted the extents
	// still referenced that were first copied into blob files of their
	// own (extents.go).
	ExtentRecords []string
	Extracted     []ocispec.Descriptor
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
// It first waits until no writer holds a lease (see Lease), and holds
// gc.lock exclusive and the index lock throughout, so no writer runs and no
// tag changes under it: a blob an export, block add, apply, hydrate or pull
// has written but not yet tagged is never swept. It fails, removing
// nothing, if a manifest, index or tree it must read is missing or corrupt:
// children it cannot list would be swept.
func (s *Store) GCWithOptions(ctx context.Context, opts GCOptions) (*GCResult, error) {
	unlockGC, err := s.lockGC(ctx)
	if err != nil {
		return nil, err
	}
	defer unlockGC()
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

	// Extents whose host is swept: those still referenced first get a file
	// of their own, then the record goes, then (below) the host.
	err = s.eachExtentRecord(ctx, func(p string, rec *extentRecord, rerr error) error {
		if rerr == nil {
			if _, ok := live[rec.Host.Digest]; ok {
				if _, err := os.Stat(s.BlobPath(rec.Host.Digest)); err == nil {
					return nil
				}
			}
		}
		res.ExtentRecords = append(res.ExtentRecords, p)
		if opts.DryRun {
			return nil
		}
		if rerr != nil {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("gc: remove %s: %w", p, err)
			}
			return nil
		}
		out, err := s.extractExtents(ctx, p, rec, live)
		res.Extracted = append(res.Extracted, out...)
		return err
	})
	if err != nil {
		return res, err
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
		s.trust.drop(d)
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

	// Temp files left by interrupted writes (no lease is held, so no
	// writer is running; the owner rule still keeps another host's files).
	res.TempFiles, err = fsutil.Sweep(s.path(ingestDir), time.Now(), opts.DryRun)
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	return res, nil
}
