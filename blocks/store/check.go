package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// Problem kinds reported by Verify.
const (
	ProblemCorrupt     = "corrupt"      // the blob's bytes do not hash to its name
	ProblemMissing     = "missing"      // referenced but not present
	ProblemSize        = "size"         // present, but not the size its reference declares
	ProblemBadDocument = "bad-document" // a manifest, index or tree that cannot be read
	ProblemUnreadable  = "unreadable"   // I/O error reading a blob or record
	ProblemBadRecord   = "bad-record"   // a member or block record that cannot be read
)

// Problem is one thing wrong in a store.
type Problem struct {
	Kind   string        `json:"kind"`
	Digest digest.Digest `json:"digest,omitempty"`
	Path   string        `json:"path"`             // the file concerned
	Ref    string        `json:"ref,omitempty"`    // who references it: a tag, a digest, a block record
	Detail string        `json:"detail,omitempty"` // what is wrong, in words
}

func (p Problem) String() string {
	s := p.Kind + ": "
	if p.Digest != "" {
		s += string(p.Digest) + " "
	}
	s += p.Path
	if p.Ref != "" {
		s += " (referenced by " + p.Ref + ")"
	}
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	return s
}

// Verify re-hashes every blob, then walks every tag (and the standard image
// its index names) and every recorded block, checking that each referenced
// blob is present, of the declared size and readable. Each problem goes to
// report (if not nil); the error is non-nil, wrapping ErrProblems, if there
// was any. An absent standard layer that can be rebuilt from its blocked
// layer and block set is not a problem (see VerifyWithOptions).
func (s *Store) Verify(ctx context.Context, report func(Problem)) error {
	return s.VerifyWithOptions(ctx, VerifyOptions{Report: report})
}

// VerifyWithOptions is Verify, also passing each absent but hydratable
// standard layer to opts.Hydratable. A standard layer is hydratable when a
// blocked manifest of its standard manifest has an intact blocked layer of
// another digest at the same position, whose block-set manifest and every
// member it lists are intact too (the rule blocks/bundle Walk uses to leave
// such layers out of bundles). Anything else absent is ProblemMissing.
func (s *Store) VerifyWithOptions(ctx context.Context, opts VerifyOptions) error {
	n := 0
	add := func(p Problem) {
		n++
		if opts.Report != nil {
			opts.Report(p)
		}
	}

	// 1. Every blob present hashes to its name.
	present := map[digest.Digest]int64{}
	bad := map[digest.Digest]bool{}
	err := s.Walk(ctx, func(d digest.Digest, size int64) error {
		present[d] = size
		p := s.BlobPath(d)
		before, keyed, _ := statKey(p)
		got, err := hashFile(ctx, p, d.Algorithm())
		switch {
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return err
		case err != nil:
			bad[d] = true
			add(Problem{Kind: ProblemUnreadable, Digest: d, Path: p, Detail: err.Error()})
		case got != d:
			// Also what presence checks must no longer trust (a disk
			// error changes bytes, not the file's identity).
			bad[d] = true
			s.forgetVerified(d)
			add(Problem{Kind: ProblemCorrupt, Digest: d, Path: p, Detail: "content hashes to " + string(got)})
		case keyed && size >= trustRecordMin:
			if after, ok, _ := statKey(p); ok && after == before {
				s.writeVerified(verifiedRecord{Digest: d, File: before})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// 1b. Every extent of an intact host hashes to its name (a blob file
	// of its own comes first; a record whose host is gone is stale: gc
	// removes it).
	err = s.eachExtentRecord(ctx, func(rp string, rec *extentRecord, rerr error) error {
		if rerr != nil {
			add(Problem{Kind: ProblemBadRecord, Path: rp, Detail: rerr.Error()})
			return nil
		}
		if size, ok := present[rec.Host.Digest]; !ok || size != rec.Host.Size || bad[rec.Host.Digest] {
			return nil
		}
		hp := s.BlobPath(rec.Host.Digest)
		f, err := os.Open(hp)
		if err != nil {
			add(Problem{Kind: ProblemUnreadable, Digest: rec.Host.Digest, Path: hp, Detail: err.Error()})
			return nil
		}
		defer f.Close()
		fi, ferr := f.Stat()
		all := ferr == nil // every extent hashed right in the host: stamped
		wrong := false     // some did not: its extents are hashed again
		for _, e := range rec.Extents {
			if _, ok := present[e.Digest]; ok {
				all = false
				continue
			}
			where := fmt.Sprintf("%s at offset %d", hp, e.Offset)
			got, err := hashReader(ctx, io.NewSectionReader(f, e.Offset, e.Size), e.Digest.Algorithm())
			switch {
			case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
				return err
			case err != nil:
				bad[e.Digest] = true
				add(Problem{Kind: ProblemUnreadable, Digest: e.Digest, Path: where, Detail: err.Error()})
			case got != e.Digest:
				// The host hashes right: the record is what is wrong.
				bad[e.Digest] = true
				add(Problem{Kind: ProblemBadRecord, Digest: e.Digest, Path: rp, Detail: fmt.Sprintf("extent at offset %d of %s hashes to %s", e.Offset, rec.Host.Digest, got)})
			}
			if bad[e.Digest] {
				all, wrong = false, true
			}
			present[e.Digest] = e.Size
		}
		switch {
		case all:
			s.stampExtents(rec.Host.Digest, fi)
		case wrong:
			s.forgetVerified(rec.Host.Digest)
		}
		return nil
	})
	if err != nil {
		return err
	}

	// 2. Everything referenced is present and of the right size.
	roots, err := s.roots()
	if err != nil {
		return err
	}
	refOf := map[digest.Digest]string{}
	for _, r := range roots {
		if name := r.Annotations[ocispec.AnnotationRefName]; name != "" {
			refOf[r.Digest] = "tag " + name
		} else {
			refOf[r.Digest] = "index.json"
		}
	}
	recorded, err := s.RecordedBlocks(ctx)
	if err != nil {
		add(Problem{Kind: ProblemBadRecord, Path: s.path(blockRootDir), Detail: err.Error()})
	}
	for _, r := range recorded {
		if _, ok := refOf[r.Digest]; !ok {
			refOf[r.Digest] = "block record " + s.path(path.Join(blockRootDir, r.Digest.Encoded()))
		}
	}
	roots = append(roots, recorded...)
	// Recorded referrers (signatures, attestations) must be whole too.
	subjects, err := s.referrerSubjects(ctx)
	if err != nil {
		add(Problem{Kind: ProblemBadRecord, Path: s.path(referrersDir), Detail: err.Error()})
	}
	for _, subj := range subjects {
		refs, err := s.Referrers(ctx, subj)
		if err != nil {
			add(Problem{Kind: ProblemBadRecord, Path: s.path(path.Join(referrersDir, subj.Encoded())), Detail: err.Error()})
			continue
		}
		for _, r := range refs {
			if _, ok := refOf[r.Digest]; !ok {
				refOf[r.Digest] = "referrer record " + s.path(referrerRecord(subj, r.Digest))
			}
			roots = append(roots, r)
		}
	}
	intact := func(d ocispec.Descriptor) bool {
		size, ok := present[d.Digest]
		return ok && size == d.Size && !bad[d.Digest]
	}
	hydratable, err := s.hydratableLayers(ctx, roots, intact)
	if err != nil {
		return err
	}
	err = s.walkGraph(ctx, roots, func(desc ocispec.Descriptor, parent *ocispec.Descriptor) (bool, error) {
		ref := refOf[desc.Digest]
		if parent != nil {
			ref = string(parent.Digest)
		}
		p, err := s.blobPath(desc.Digest)
		if err != nil {
			add(Problem{Kind: ProblemBadDocument, Digest: desc.Digest, Ref: ref, Detail: err.Error()})
			return false, nil
		}
		size, ok := present[desc.Digest]
		switch {
		case !ok && desc.Data != nil && digest.FromBytes(desc.Data) == desc.Digest:
			// Embedded data (e.g. the empty config) needs no blob.
			return false, nil
		case !ok:
			if h, ok := hydratable[desc.Digest]; ok {
				if opts.Hydratable != nil {
					opts.Hydratable(h)
				}
				return false, nil
			}
			add(Problem{Kind: ProblemMissing, Digest: desc.Digest, Path: p, Ref: ref, Detail: desc.MediaType})
			return false, nil
		case size != desc.Size:
			add(Problem{Kind: ProblemSize, Digest: desc.Digest, Path: p, Ref: ref,
				Detail: fmt.Sprintf("file is %d bytes, reference declares %d", size, desc.Size)})
			return false, nil
		case bad[desc.Digest]:
			return false, nil // already reported; its content cannot be trusted
		}
		return true, nil
	}, func(desc ocispec.Descriptor, parent *ocispec.Descriptor, err error) {
		add(Problem{Kind: ProblemBadDocument, Digest: desc.Digest, Path: s.BlobPath(desc.Digest), Detail: err.Error()})
	})
	if err != nil {
		return err
	}

	// 3. Member records are readable and name a member that holds their
	// block (a record whose member is gone is not a problem: LookupMember
	// ignores it and gc removes it). A wrong one would make every export of
	// its block fail; LookupMember drops it, verify --repair rebuilds it.
	for _, c := range []blocks.Compression{blocks.Gzip, blocks.Zstd} {
		err := s.eachMemberRecord(ctx, c, func(rel string, m ocispec.Descriptor, rerr error) error {
			if rerr != nil {
				add(Problem{Kind: ProblemBadRecord, Path: s.path(rel), Detail: rerr.Error()})
				return nil
			}
			if size, ok := present[m.Digest]; !ok || size != m.Size || bad[m.Digest] {
				return nil
			}
			raw := digest.NewDigestFromEncoded(digest.SHA256, path.Base(rel))
			if err := s.CheckMember(ctx, raw, c, m); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				add(Problem{Kind: ProblemBadRecord, Digest: m.Digest, Path: s.path(rel), Detail: err.Error()})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}

	if n > 0 {
		return fmt.Errorf("store %s: %d problem(s): %w", s.root, n, ErrProblems)
	}
	return nil
}

// eachMemberRecord calls fn for every member record of compression c, with
// the record's error (if unreadable) rather than stopping.
func (s *Store) eachMemberRecord(ctx context.Context, c blocks.Compression, fn func(rel string, desc ocispec.Descriptor, err error) error) error {
	dir := path.Join(membersDir, string(c))
	ents, err := os.ReadDir(s.path(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", s.path(dir), err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		rel := path.Join(dir, e.Name())
		desc, rerr := s.readRecord(rel)
		if errors.Is(rerr, os.ErrNotExist) {
			continue
		}
		if err := fn(rel, desc, rerr); err != nil {
			return err
		}
	}
	return nil
}

// hashFile streams p through alg.
func hashFile(ctx context.Context, p string, alg digest.Algorithm) (digest.Digest, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return hashReader(ctx, f, alg)
}

// hashReader streams r through alg.
func hashReader(ctx context.Context, r io.Reader, alg digest.Algorithm) (digest.Digest, error) {
	h := alg.Hash()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	if _, err := io.CopyBuffer(h, ctxReader{ctx, r}, *bp); err != nil {
		return "", err
	}
	return digest.NewDigest(alg, h), nil
}
