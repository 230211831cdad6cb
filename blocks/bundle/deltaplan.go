package bundle

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// Base choice for block deltas. A block's base is a block member the
// target holds, found by the block's path in the images in view (the --from
// images, or with an inventory every image of the source store): first the
// file at the same path, then one whose path is the same once versions are
// taken out (libfoo-1.2.jar and libfoo-1.3.jar, java-17 and java-21,
// libcurl.so.4.8.0 and libcurl.so.4.8.1), then one with the same file name
// without version in any folder. Among several, the one whose size is
// closest wins (then the lowest digest), so the choice is deterministic.
// Last, by content similarity (deltasimilar.go).

// baseMember is a block member the target holds, as a delta base.
type baseMember struct {
	ref  BlobRef
	path string
	raw  int64 // block size
}

// deltaIndex finds base members by path.
type deltaIndex struct {
	byPath, byVPath, byVName map[string][]baseMember
}

var versionRE = regexp.MustCompile(`[-_.+~]?[0-9]+`)

// versionless removes the version-like parts of a path: runs of digits and
// the separator before each (libfoo-1.2.3.jar -> libfoo.jar).
func versionless(p string) string { return versionRE.ReplaceAllString(p, "") }

func (x *deltaIndex) add(m baseMember) {
	x.byPath[m.path] = append(x.byPath[m.path], m)
	v := versionless(m.path)
	x.byVPath[v] = append(x.byVPath[v], m)
	n := path.Base(v)
	x.byVName[n] = append(x.byVName[n], m)
}

// find returns the base for the block at p of size raw, and how it was
// chosen.
func (x *deltaIndex) find(p string, raw int64, self digest.Digest) (baseMember, string, bool) {
	v := versionless(p)
	for _, c := range []struct {
		how  string
		list []baseMember
	}{
		{"same path", x.byPath[p]},
		{"same name without version", x.byVPath[v]},
		{"same file name without version", x.byVName[path.Base(v)]},
	} {
		var best baseMember
		ok := false
		for _, m := range c.list {
			if m.ref.Digest == self {
				continue
			}
			d, bd := abs(m.raw-raw), abs(best.raw-raw)
			if !ok || d < bd || d == bd && m.ref.Digest < best.ref.Digest {
				best, ok = m, true
			}
		}
		if ok {
			return best, c.how, true
		}
	}
	return baseMember{}, "", false
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// layerStubs reads the stubs of a blocked layer from s.
func layerStubs(ctx context.Context, s *store.Store, d ocispec.Descriptor) ([]layer.StubEntry, error) {
	rc, err := s.Fetch(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("blocked layer %s: %w", d.Digest, err)
	}
	defer rc.Close()
	st, err := layer.ReadStubs(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("blocked layer %s: %w", d.Digest, err)
	}
	return st, nil
}

func blobRefDesc(r BlobRef) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: blocks.MediaTypeMemberGzip, Digest: r.Digest, Size: r.Size}
}

// deltaTask is a shipped block member to try as a delta against base.
type deltaTask struct {
	ship  int // index in Plan.Ship
	path  string
	block BlobRef
	base  baseMember
	how   string
}

// addDeltas turns block members of p.Ship into deltas against members the
// target holds, where that saves enough (deltaWorth). The deltas are
// written under dir and added to files. budget is the deflate work apply
// will do (member patches made so far): a delta whose block would pass it
// is not made, and its block travels whole.
func addDeltas(ctx context.Context, s *store.Store, p *Plan, news, view []string, base Base, dir string, files map[digest.Digest]string, budget *deflateBudget) error {
	x := &deltaIndex{byPath: map[string][]baseMember{}, byVPath: map[string][]baseMember{}, byVName: map[string][]baseMember{}}
	seenLayer := map[digest.Digest]bool{}
	held := map[digest.Digest]bool{}
	for _, name := range view {
		img, err := image.Resolve(ctx, s, name)
		if err != nil {
			continue // not a blockfile image
		}
		for _, m := range img.Manifests {
			for _, l := range m.Layers {
				if !l.HasBlocks() || seenLayer[l.Blocked.Digest] || l.Blocked.MediaType != ocispec.MediaTypeImageLayerGzip {
					continue
				}
				seenLayer[l.Blocked.Digest] = true
				stubs, err := layerStubs(ctx, s, l.Blocked)
				if err != nil {
					return err
				}
				for _, e := range stubs {
					md := e.Stub.Member.Digest
					ok, seen := held[md]
					if !seen {
						ok = base.Has(md)
						if ok {
							if ok, err = s.Exists(ctx, md); err != nil {
								return err
							}
						}
						held[md] = ok
					}
					if ok && e.Stub.Member.Size <= maxDeltaBlob {
						x.add(baseMember{ref: BlobRef{Digest: md, Size: e.Stub.Member.Size}, path: e.Path, raw: e.Stub.Block.Size})
					}
				}
			}
		}
	}
	if len(held) == 0 {
		return nil
	}
	ship := map[digest.Digest]int{}
	for i, b := range p.Ship {
		if b.Kind == KindBlock && b.MediaType == blocks.MediaTypeMemberGzip && b.Patch == nil && b.Size <= maxDeltaBlob {
			ship[b.Digest] = i
		}
	}
	var tasks []deltaTask
	planned := map[int]bool{}
	sketches := map[digest.Digest]map[uint64]bool{}
	for _, name := range news {
		img, err := image.Resolve(ctx, s, name)
		if err != nil {
			return err
		}
		for _, m := range img.Manifests {
			for _, l := range m.Layers {
				if !l.HasBlocks() || l.Blocked.MediaType != ocispec.MediaTypeImageLayerGzip {
					continue
				}
				stubs, err := layerStubs(ctx, s, l.Blocked)
				if err != nil {
					return err
				}
				for _, e := range stubs {
					k, ok := ship[e.Stub.Member.Digest]
					if !ok || planned[k] || e.Stub.Block.Size > maxDeltaRaw {
						continue
					}
					bm, how, ok := x.find(e.Path, e.Stub.Block.Size, e.Stub.Member.Digest)
					if !ok {
						ref := BlobRef{Digest: e.Stub.Member.Digest, Size: e.Stub.Member.Size}
						if bm, ok, err = x.similar(ctx, s, e.Path, ref, e.Stub.Block.Size, sketches); err != nil {
							return err
						}
						how = "similar content"
					}
					if !ok {
						continue
					}
					planned[k] = true
					tasks = append(tasks, deltaTask{ship: k, path: e.Path, block: BlobRef(e.Stub.Block), base: bm, how: how})
				}
			}
		}
	}
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].ship < tasks[j].ship })
	required := map[digest.Digest]bool{}
	for _, b := range p.Requires {
		required[b.Digest] = true
	}
	// Apply refuses a bundle whose patched blobs total more than
	// MaxPatchedBytes: stay within it, counting the patches made so far.
	var patchedBytes int64
	for _, b := range p.Ship {
		if b.Patch != nil {
			patchedBytes += b.Size
		}
	}
	for _, t := range tasks {
		b := &p.Ship[t.ship]
		if patchedBytes+b.Size > MaxPatchedBytes || !budget.fits(deltaDeflate(t.block)) {
			continue
		}
		patch, err := tryDelta(ctx, s, *b, t, dir, files)
		if err != nil {
			return err
		}
		if patch == nil {
			continue
		}
		if err := budget.take(deltaDeflate(t.block)); err != nil {
			return err // fits said it would not
		}
		b.Patch = patch
		patchedBytes += b.Size
		if !required[t.base.ref.Digest] {
			required[t.base.ref.Digest] = true
			p.Requires = append(p.Requires, Blob{MediaType: blocks.MediaTypeMemberGzip, Digest: t.base.ref.Digest, Size: t.base.ref.Size, Kind: KindBlock})
		}
	}
	sort.Slice(p.Requires, func(i, j int) bool { return p.Requires[i].Digest < p.Requires[j].Digest })
	return nil
}

// tryDelta makes the delta of b against t.base and keeps it if it is worth it.
func tryDelta(ctx context.Context, s *store.Store, b Blob, t deltaTask, dir string, files map[digest.Digest]string) (*Patch, error) {
	f, err := os.CreateTemp(dir, "delta-*")
	if err != nil {
		return nil, err
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := makeDelta(ctx, s, io.MultiWriter(f, h), BlobRef{Digest: b.Digest, Size: b.Size}, t.base.ref, t.block)
	if err != nil {
		return nil, fmt.Errorf("block %s (%s): %w", b.Digest, t.path, err)
	}
	if n == 0 || !deltaWorth(n, b.Size) {
		return nil, nil
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	d := digest.NewDigest(digest.SHA256, h)
	if _, dup := files[d]; dup {
		return nil, nil
	}
	p := filepath.Join(dir, d.Encoded())
	if err := os.Rename(f.Name(), p); err != nil {
		return nil, err
	}
	keep = true
	files[d] = p
	blk := t.block
	return &Patch{Encoding: PatchDeltaMember, Base: t.base.ref, Digest: d, Size: n, Block: &blk,
		Path: strings.TrimPrefix(t.path, "./"), BasePath: strings.TrimPrefix(t.base.path, "./"), BaseChoice: t.how}, nil
}
