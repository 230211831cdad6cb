package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// RepairResult says what Repair did.
type RepairResult struct {
	// Removed are damaged blobs taken out of the store (corrupt, or of the
	// wrong size): kept, they would only fail every read.
	Removed []string `json:"removed,omitempty"`
	// DroppedRecords are member records that could not be read or named a
	// member that does not hold their block.
	DroppedRecords []string `json:"droppedRecords,omitempty"`
	// Records is how many member records were written from block sets.
	Records int `json:"records"`
	// Materialized are the images whose absent standard layers were
	// rebuilt by hydrate.
	Materialized []string `json:"materialized,omitempty"`
	// Failed says, per image, why it could not be repaired.
	Failed map[string]string `json:"failed,omitempty"`
}

// Repair rebuilds what can be rebuilt in a store, then leaves the rest to
// Verify: damaged blobs are removed (a bundle, a pull or an export brings
// them back; standard layers are rebuilt below); bad member records are
// dropped and the member index is rebuilt from every tagged image's block
// sets (the stubs name each member's raw block); the standard layers of
// every tagged image are rebuilt by hydrate where the blocked layer and
// members allow (Materialize). It holds a lease, so gc does not run
// meanwhile.
func Repair(ctx context.Context, s *store.Store) (*RepairResult, error) {
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	res := &RepairResult{Failed: map[string]string{}}
	var problems []store.Problem
	verr := s.Verify(ctx, func(p store.Problem) { problems = append(problems, p) })
	if verr != nil && !errors.Is(verr, store.ErrProblems) {
		return nil, verr
	}
	for _, p := range problems {
		switch p.Kind {
		case store.ProblemCorrupt:
			if err := os.Remove(p.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return res, fmt.Errorf("repair: remove %s: %w", p.Path, err)
			}
			res.Removed = append(res.Removed, p.Path)
		case store.ProblemSize:
			// Only the blob's own file: the reference may be the liar,
			// but a blob whose size differs from what an image declares
			// cannot serve it either way.
			if p.Digest != "" && p.Path == s.BlobPath(p.Digest) {
				if err := os.Remove(p.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
					return res, fmt.Errorf("repair: remove %s: %w", p.Path, err)
				}
				res.Removed = append(res.Removed, p.Path)
			}
		case store.ProblemBadRecord:
			if p.Path != "" && p.Path != s.BlobPath(p.Digest) {
				if err := os.Remove(p.Path); err == nil {
					res.DroppedRecords = append(res.DroppedRecords, p.Path)
				}
			}
		}
	}
	tags, err := s.Tags(ctx)
	if err != nil {
		return res, err
	}
	names := make([]string, 0, len(tags))
	for n := range tags {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		img, err := Resolve(ctx, s, name)
		if err != nil {
			res.Failed[name] = err.Error()
			continue
		}
		n, err := recordMembers(ctx, s, img)
		res.Records += n
		if err != nil {
			res.Failed[name] = err.Error()
			continue
		}
		if _, err := Materialize(ctx, s, name); err != nil {
			res.Failed[name] = err.Error()
			continue
		}
		res.Materialized = append(res.Materialized, name)
	}
	return res, nil
}

// recordMembers writes the member record of every block of img whose
// member is present and holds it (LookupMember checks an existing record;
// RecordMember writes a missing one after CheckMember).
func recordMembers(ctx context.Context, s *store.Store, img *Image) (int, error) {
	n := 0
	for _, m := range img.Manifests {
		for _, l := range m.Layers {
			if !l.HasBlocks() {
				continue
			}
			members := map[string]ocispec.Descriptor{}
			for _, d := range l.Members {
				members[d.Digest.String()] = d
			}
			rc, err := s.Fetch(ctx, l.Blocked)
			if err != nil {
				return n, fmt.Errorf("blocked layer %s: %w", l.Blocked.Digest, err)
			}
			stubs, err := layer.ReadStubs(ctx, rc)
			rc.Close()
			if err != nil {
				return n, fmt.Errorf("blocked layer %s: %w", l.Blocked.Digest, err)
			}
			for _, st := range stubs {
				d, ok := members[st.Stub.Member.Digest.String()]
				if !ok {
					continue
				}
				c := blocks.Gzip
				if d.MediaType == blocks.MediaTypeMemberZstd {
					c = blocks.Zstd
				}
				if _, found, err := s.LookupMember(ctx, st.Stub.Block.Digest, c); err != nil || found {
					if err != nil {
						return n, err
					}
					continue
				}
				if ok, err := s.Exists(ctx, d.Digest); err != nil || !ok {
					continue // absent: a bundle or pull brings it
				}
				if err := s.CheckMember(ctx, st.Stub.Block.Digest, c, d); err != nil {
					continue
				}
				if err := s.RecordMember(ctx, st.Stub.Block.Digest, c, d); err != nil {
					return n, err
				}
				n++
			}
		}
	}
	return n, nil
}
