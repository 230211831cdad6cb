package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
)

// patchOverhead is about what a patch adds to the header (its descriptor);
// a patch is used only when it saves more than that.
const patchOverhead = 256

// baseLayer is a layer of an image the target holds, as a patch base.
type baseLayer struct {
	layer   image.Layer
	members map[digest.Digest]bool
	man     *image.Manifest
	pos     int
}

// patcher picks patch bases for the blobs of a plan and makes the patches.
type patcher struct {
	s      *store.Store
	base   Base
	dir    string // temp files
	files  map[digest.Digest]string
	layers []baseLayer
	mans   []*image.Manifest
	usable map[digest.Digest]bool
	// deflate is what apply will deflate for the member patches made so
	// far, within MaxDeflatedBytes.
	deflate *deflateBudget
}

// addPatches turns blobs of p.Ship into patches against blobs the target
// holds, where that saves bytes. The candidates are the layers, block sets
// and configs of the images in view (the --from images, or every image of
// the source store for an inventory) that the base holds and s has. A
// blocked layer is patched against the held layer that shares the most
// block members with it (then: the one at the same position of a manifest
// with as many layers; then the manifest sharing most layers; then the
// lowest digest, so the choice is deterministic), its block set against
// that layer's block set, and a config against the config of the held
// manifest sharing most layers. The patches are written under dir; the
// returned map gives their paths by patch digest. budget counts the deflate
// work the member patches will ask of apply.
func addPatches(ctx context.Context, s *store.Store, p *Plan, news, view []string, base Base, dir string, budget *deflateBudget) (map[digest.Digest]string, error) {
	pt := &patcher{s: s, base: base, dir: dir, files: map[digest.Digest]string{}, usable: map[digest.Digest]bool{}, deflate: budget}
	for _, name := range view {
		img, err := image.Resolve(ctx, s, name)
		if err != nil {
			continue // not a blockfile image: nothing to patch against
		}
		for _, m := range img.Manifests {
			if err := pt.addBase(ctx, m); err != nil {
				return nil, err
			}
		}
	}
	if len(pt.layers) == 0 {
		return pt.files, nil
	}
	ship := map[digest.Digest]int{}
	for i, b := range p.Ship {
		ship[b.Digest] = i
	}
	required := map[digest.Digest]bool{}
	for _, b := range p.Requires {
		required[b.Digest] = true
	}
	var patchedBytes int64 // within MaxPatchedBytes, which apply enforces
	use := func(i int, baseBlob Blob) error {
		b := &p.Ship[i]
		if b.Patch != nil || b.Size < minPatchTarget || b.Size > maxPatchTarget || patchedBytes+b.Size > MaxPatchedBytes {
			return nil
		}
		patch, err := pt.try(ctx, *b, baseBlob)
		if err != nil || patch == nil {
			return err
		}
		b.Patch = patch
		patchedBytes += b.Size
		if !required[baseBlob.Digest] {
			required[baseBlob.Digest] = true
			p.Requires = append(p.Requires, baseBlob)
		}
		return nil
	}
	for _, name := range news {
		img, err := image.Resolve(ctx, s, name)
		if err != nil {
			return nil, err
		}
		for _, m := range img.Manifests {
			for i, l := range m.Layers {
				// A layer without blocks is one compressed stream, which a
				// change scrambles from the first changed byte: no patch.
				k, ok := ship[l.Blocked.Digest]
				if !ok || !l.HasBlocks() {
					continue
				}
				bl := pt.pick(m, i, l)
				if bl == nil {
					continue
				}
				if err := use(k, layerBlob(bl.layer)); err != nil {
					return nil, err
				}
				if l.BlockSet == nil || bl.layer.BlockSet == nil || !pt.usable[bl.layer.BlockSet.Digest] {
					continue
				}
				if k, ok := ship[l.BlockSet.Digest]; ok {
					if err := use(k, Blob{MediaType: bl.layer.BlockSet.MediaType, Digest: bl.layer.BlockSet.Digest, Size: bl.layer.BlockSet.Size, Kind: KindBlockSet}); err != nil {
						return nil, err
					}
				}
			}
			cfg := m.Manifest.Config
			if k, ok := ship[cfg.Digest]; ok {
				if bm := pt.closest(m); bm != nil {
					c := bm.Manifest.Config
					if err := use(k, Blob{MediaType: c.MediaType, Digest: c.Digest, Size: c.Size, Kind: KindConfig}); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	sort.Slice(p.Requires, func(i, j int) bool { return p.Requires[i].Digest < p.Requires[j].Digest })
	return pt.files, nil
}

func layerBlob(l image.Layer) Blob {
	k := KindBlockedLayer
	if !l.HasBlocks() {
		k = KindLayer
	}
	return Blob{MediaType: l.Blocked.MediaType, Digest: l.Blocked.Digest, Size: l.Blocked.Size, Kind: k}
}

// isUsable reports whether the target holds d (per the base) and the
// source store has it to read, within the size bound of a base.
func (pt *patcher) isUsable(ctx context.Context, d ocispec.Descriptor) (bool, error) {
	if ok, seen := pt.usable[d.Digest]; seen {
		return ok, nil
	}
	ok := d.Size > 0 && d.Size <= maxPatchBase && pt.base != nil && pt.base.Has(d.Digest)
	if ok {
		var err error
		if ok, err = pt.s.Exists(ctx, d.Digest); err != nil {
			return false, err
		}
	}
	pt.usable[d.Digest] = ok
	return ok, nil
}

func (pt *patcher) addBase(ctx context.Context, m *image.Manifest) error {
	pt.mans = append(pt.mans, m)
	for _, d := range []ocispec.Descriptor{m.Manifest.Config} {
		if _, err := pt.isUsable(ctx, d); err != nil {
			return err
		}
	}
	for i, l := range m.Layers {
		if l.BlockSet != nil {
			if _, err := pt.isUsable(ctx, *l.BlockSet); err != nil {
				return err
			}
		}
		ok, err := pt.isUsable(ctx, l.Blocked)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		members := map[digest.Digest]bool{}
		for _, mb := range l.Members {
			members[mb.Digest] = true
		}
		pt.layers = append(pt.layers, baseLayer{layer: l, members: members, man: m, pos: i})
	}
	return nil
}

// shared counts the layers of a that b also has and the base holds.
func (pt *patcher) shared(a, b *image.Manifest) int {
	in := map[digest.Digest]bool{}
	for _, l := range b.Layers {
		in[l.Blocked.Digest] = true
	}
	n := 0
	for _, l := range a.Layers {
		if in[l.Blocked.Digest] && pt.usable[l.Blocked.Digest] {
			n++
		}
	}
	return n
}

// pick returns the base layer to patch layer i of m against, or nil.
func (pt *patcher) pick(m *image.Manifest, i int, l image.Layer) *baseLayer {
	type score struct {
		overlap, samePos, shared int
		d                        digest.Digest
	}
	var best *baseLayer
	var bs score
	sharedOf := map[*image.Manifest]int{}
	for k := range pt.layers {
		c := &pt.layers[k]
		if c.layer.Blocked.Digest == l.Blocked.Digest {
			continue
		}
		sc := score{d: c.layer.Blocked.Digest}
		for _, mb := range l.Members {
			if c.members[mb.Digest] {
				sc.overlap++
			}
		}
		if c.pos == i && len(c.man.Layers) == len(m.Layers) {
			sc.samePos = 1
		}
		if sc.overlap == 0 && sc.samePos == 0 {
			continue
		}
		n, ok := sharedOf[c.man]
		if !ok {
			n = pt.shared(m, c.man)
			sharedOf[c.man] = n
		}
		sc.shared = n
		better := best == nil ||
			sc.overlap > bs.overlap ||
			sc.overlap == bs.overlap && (sc.samePos > bs.samePos ||
				sc.samePos == bs.samePos && (sc.shared > bs.shared ||
					sc.shared == bs.shared && sc.d < bs.d))
		if better {
			best, bs = c, sc
		}
	}
	return best
}

// closest returns the manifest with a config the target holds that shares
// the most layers with m (at least one; lowest config digest on a tie), or
// nil. (With an inventory the view holds every image of the source store,
// also ones the target lacks: only what the target holds may be a base.)
func (pt *patcher) closest(m *image.Manifest) *image.Manifest {
	var best *image.Manifest
	bn := 0
	for _, c := range pt.mans {
		if c.Manifest.Config.Digest == m.Manifest.Config.Digest || !pt.usable[c.Manifest.Config.Digest] {
			continue
		}
		n := pt.shared(m, c)
		if n > bn || n == bn && n > 0 && c.Manifest.Config.Digest < best.Manifest.Config.Digest {
			best, bn = c, n
		}
	}
	return best
}

// try makes the patch of b against base and keeps it if it saves bytes.
func (pt *patcher) try(ctx context.Context, b Blob, base Blob) (*Patch, error) {
	ref := BlobRef{Digest: base.Digest, Size: base.Size}
	dict, err := loadBase(ctx, pt.s, ref)
	if err != nil {
		return nil, err
	}
	src, err := pt.s.Fetch(ctx, b.Descriptor())
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", b.Digest, err)
	}
	defer src.Close()
	var rc io.ReadCloser = src
	f, err := os.CreateTemp(pt.dir, "patch-*")
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
	cw := &countingWriter{w: io.MultiWriter(f, h)}
	enc := PatchZstdDict
	if b.Kind == KindBlockedLayer && b.MediaType == ocispec.MediaTypeImageLayerGzip {
		// Describe the layer member by member, uncompressed; see
		// PatchZstdGzipMembers. Blobs and bases are at most
		// maxPatchTarget and maxPatchBase bytes (64 MiB).
		blob, err := io.ReadAll(io.LimitReader(rc, b.Size+1))
		if err != nil {
			return nil, fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		err = makeMemberPatch(cw, blob, dict, pt.dir, pt.deflate)
		if err == nil {
			enc = PatchZstdGzipMembers
		} else if !errors.Is(err, errNoMemberPatch) {
			return nil, fmt.Errorf("blob %s: patch against %s: %w", b.Digest, base.Digest, err)
		} else {
			rc = io.NopCloser(bytes.NewReader(blob))
		}
	}
	if enc == PatchZstdDict {
		if err := makePatch(cw, rc, b.Size, dict); err != nil {
			return nil, fmt.Errorf("blob %s: patch against %s: %w", b.Digest, base.Digest, err)
		}
	}
	if cw.n+patchOverhead >= b.Size {
		return nil, nil
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	d := digest.NewDigest(digest.SHA256, h)
	if _, dup := pt.files[d]; dup {
		return nil, nil
	}
	path := filepath.Join(pt.dir, d.Encoded())
	if err := os.Rename(f.Name(), path); err != nil {
		return nil, err
	}
	keep = true
	pt.files[d] = path
	return &Patch{Encoding: enc, Base: ref, Digest: d, Size: cw.n}, nil
}
