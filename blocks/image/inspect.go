package image

import (
	"context"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// Info summarizes an image in the store.
type Info struct {
	Name      string             `json:"name"`
	Index     ocispec.Descriptor `json:"index"`
	Standard  ocispec.Descriptor `json:"standard"`
	Manifests []ManifestInfo     `json:"manifests"`
	// Blocks and BlockBytes count distinct block members over the image
	// (stored, compressed bytes); Stubs counts stub entries.
	Blocks     int   `json:"blocks"`
	BlockBytes int64 `json:"blockBytes"`
	Stubs      int   `json:"stubs"`
	// Others are pass-through entries (attestations).
	Others []ocispec.Descriptor `json:"others,omitempty"`
}

// ManifestInfo describes one platform.
type ManifestInfo struct {
	Platform *ocispec.Platform  `json:"platform,omitempty"`
	Standard ocispec.Descriptor `json:"standard"`
	Blocked  ocispec.Descriptor `json:"blocked"`
	Config   ocispec.Descriptor `json:"config"`
	Layers   []LayerInfo        `json:"layers"`
}

// LayerInfo describes one layer.
type LayerInfo struct {
	Standard   ocispec.Descriptor  `json:"standard"`
	Blocked    ocispec.Descriptor  `json:"blocked"`
	BlockSet   *ocispec.Descriptor `json:"blockSet,omitempty"`
	Stubs      int                 `json:"stubs"`
	Blocks     int                 `json:"blocks"`
	BlockBytes int64               `json:"blockBytes"`
}

// Inspect describes the image name. It counts stubs by reading each blocked
// layer that has blocks (blocked layers are small: block data is not in
// them).
func Inspect(ctx context.Context, s *store.Store, name string) (*Info, error) {
	img, err := Resolve(ctx, s, name)
	if err != nil {
		return nil, err
	}
	info := &Info{Name: name, Index: img.Index, Standard: img.Standard, Others: img.Others}
	seen := map[digest.Digest]bool{}
	stubs := map[digest.Digest]int{}
	for _, m := range img.Manifests {
		mi := ManifestInfo{Platform: m.Descriptor.Platform, Standard: plain(m.Descriptor), Blocked: m.Blocked, Config: m.Manifest.Config}
		for _, l := range m.Layers {
			li := LayerInfo{Standard: l.Standard, Blocked: l.Blocked, BlockSet: l.BlockSet, Blocks: len(l.Members)}
			for _, mem := range l.Members {
				li.BlockBytes += mem.Size
				if !seen[mem.Digest] {
					seen[mem.Digest] = true
					info.Blocks++
					info.BlockBytes += mem.Size
				}
			}
			if l.HasBlocks() {
				n, ok := stubs[l.Blocked.Digest]
				if !ok {
					if n, err = countStubs(ctx, s, l.Blocked); err != nil {
						return nil, fmt.Errorf("inspect %s: blocked layer %s: %w", name, l.Blocked.Digest, err)
					}
					stubs[l.Blocked.Digest] = n
					info.Stubs += n // platforms sharing a layer count it once
				}
				li.Stubs = n
			}
			mi.Layers = append(mi.Layers, li)
		}
		info.Manifests = append(info.Manifests, mi)
	}
	return info, nil
}

// countStubs counts the stubs of the blocked layer d with layer.ReadStubs,
// which checks the layer the way hydrate does: a user's own file whose name
// merely starts with ".import." is not a stub.
func countStubs(ctx context.Context, s *store.Store, d ocispec.Descriptor) (int, error) {
	rc, err := s.Fetch(ctx, d)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	stubs, err := layer.ReadStubs(ctx, rc)
	if err != nil {
		return 0, err
	}
	// Read to the end so the blob's digest is checked as well.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return 0, err
	}
	return len(stubs), nil
}
