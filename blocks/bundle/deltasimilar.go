package bundle

import (
	"context"
	"path"
	"sort"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/store"
)

// Content similarity, the last rule of base choice: a changed block whose
// path matches nothing the site holds (a file renamed beyond its version, a
// jar shaded under another name) is compared with the held blocks of the
// same extension and a size within a factor of two (the simCandidates
// closest in size) by sampled chunk hashes: a gear rolling hash over the
// bytes, sampled where its low bits are zero, so the samples follow the
// content and survive insertions. The candidate sharing the most samples,
// at least simMin of the block's, is the base.
const (
	simCandidates = 4
	simMinBytes   = 64 << 10
	simMask       = 1<<9 - 1 // one sample per 512 bytes on average
	simMin        = 0.10
)

var gear = func() (g [256]uint64) {
	x := uint64(0x9E3779B97F4A7C15)
	for i := range g {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		g[i] = x
	}
	return
}()

// sketch returns the sampled chunk hashes of b.
func sketch(b []byte) map[uint64]bool {
	out := map[uint64]bool{}
	var h uint64
	for _, c := range b {
		h = h<<1 + gear[c]
		if h&simMask == 0 {
			out[h] = true
		}
	}
	return out
}

// similar finds, among x's members, the base most similar in content to
// the block member target (raw bytes inflated on demand); sketches of
// base members are cached in cache.
func (x *deltaIndex) similar(ctx context.Context, s *store.Store, p string, target BlobRef, raw int64, cache map[digest.Digest]map[uint64]bool) (baseMember, bool, error) {
	if raw < simMinBytes {
		return baseMember{}, false, nil
	}
	ext := path.Ext(versionless(p))
	var cands []baseMember
	seen := map[digest.Digest]bool{}
	for _, list := range x.byVName {
		for _, m := range list {
			if seen[m.ref.Digest] || m.ref.Digest == target.Digest || m.raw < raw/2 || m.raw > raw*2 || path.Ext(versionless(m.path)) != ext {
				continue
			}
			seen[m.ref.Digest] = true
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return baseMember{}, false, nil
	}
	sort.Slice(cands, func(i, j int) bool {
		di, dj := abs(cands[i].raw-raw), abs(cands[j].raw-raw)
		return di < dj || di == dj && cands[i].ref.Digest < cands[j].ref.Digest
	})
	cands = cands[:min(len(cands), simCandidates)]
	data, err := inflateMember(ctx, s, target)
	if err != nil {
		return baseMember{}, false, err
	}
	want := sketch(data)
	if len(want) == 0 {
		return baseMember{}, false, nil
	}
	var best baseMember
	bestN := 0
	for _, c := range cands {
		sk, ok := cache[c.ref.Digest]
		if !ok {
			b, err := inflateMember(ctx, s, c.ref)
			if err != nil {
				return baseMember{}, false, err
			}
			sk = sketch(b)
			cache[c.ref.Digest] = sk
		}
		n := 0
		for h := range want {
			if sk[h] {
				n++
			}
		}
		if n > bestN {
			best, bestN = c, n
		}
	}
	if float64(bestN) < simMin*float64(len(want)) {
		return baseMember{}, false, nil
	}
	return best, true, nil
}
