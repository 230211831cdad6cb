package store

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/tree"
)

// Docker media types that the graph walk understands beside the OCI ones.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// HasChildren reports whether blobs of mediaType reference other blobs (and so
// are opened by the graph walk). Anything else is a leaf.
func HasChildren(mediaType string) bool {
	switch mediaType {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		MediaTypeDockerManifest, MediaTypeDockerManifestList, blocks.MediaTypeTree:
		return true
	}
	return false
}

// node holds the fields of an OCI or Docker manifest or index that reference
// other blobs.
type node struct {
	Config      *ocispec.Descriptor  `json:"config,omitempty"`
	Layers      []ocispec.Descriptor `json:"layers,omitempty"`
	Manifests   []ocispec.Descriptor `json:"manifests,omitempty"`
	Subject     *ocispec.Descriptor  `json:"subject,omitempty"`
	Annotations map[string]string    `json:"annotations,omitempty"`
}

// Children returns the blobs desc references: a manifest's config, layers and
// subject; an index's manifests, subject, and the standard image named by its
// dev.blockfile.standard annotation; a tree's file blocks. Other media types
// are leaves (nil). The blob is read verified.
func (s *Store) Children(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	switch desc.MediaType {
	case blocks.MediaTypeTree:
		rc, err := s.Fetch(ctx, desc)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		t, err := tree.Parse(rc, MaxJSONSize)
		if err != nil {
			return nil, fmt.Errorf("tree %s (%s): %w", desc.Digest, s.BlobPath(desc.Digest), err)
		}
		var out []ocispec.Descriptor
		for _, r := range t.Blocks() {
			out = append(out, r.Descriptor(blocks.MediaTypeBlock))
		}
		return out, nil
	case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest,
		ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList:
	default:
		return nil, nil
	}
	var n node
	if err := s.GetJSON(ctx, desc, &n); err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	if n.Config != nil {
		out = append(out, *n.Config)
	}
	out = append(out, n.Layers...)
	out = append(out, n.Manifests...)
	if n.Subject != nil {
		out = append(out, *n.Subject)
	}
	if std, ok, err := blocks.StandardOf(n.Annotations); err != nil {
		return nil, fmt.Errorf("blob %s (%s): %w", desc.Digest, s.BlobPath(desc.Digest), err)
	} else if ok {
		out = append(out, std)
	}
	return out, nil
}

// StandardOf returns the standard-image descriptor that the
// dev.blockfile.standard annotations (on an image index written by export)
// name; ok is false if there is none. It is blocks.StandardOf, the one
// reader of the format (blocks/imageindex.go).
func StandardOf(annotations map[string]string) (desc ocispec.Descriptor, ok bool, err error) {
	return blocks.StandardOf(annotations)
}

// Reachable returns every blob reachable from roots (roots included), keyed
// by digest. It opens only blobs whose media type has children; a missing or
// corrupt one of those is an error (its children are unknown), a missing
// leaf is not (Verify reports it).
func (s *Store) Reachable(ctx context.Context, roots ...ocispec.Descriptor) (map[digest.Digest]ocispec.Descriptor, error) {
	seen := map[digest.Digest]ocispec.Descriptor{}
	err := s.walkGraph(ctx, roots, func(desc ocispec.Descriptor, parent *ocispec.Descriptor) (bool, error) {
		seen[desc.Digest] = desc
		return true, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return seen, nil
}

// walkGraph visits every descriptor reachable from roots once, depth first.
// visit says whether to descend into desc. If onErr is nil a failure to read
// children stops the walk; otherwise it is passed to onErr and the walk goes on.
func (s *Store) walkGraph(ctx context.Context, roots []ocispec.Descriptor,
	visit func(desc ocispec.Descriptor, parent *ocispec.Descriptor) (descend bool, err error),
	onErr func(desc ocispec.Descriptor, parent *ocispec.Descriptor, err error)) error {
	type item struct {
		desc   ocispec.Descriptor
		parent *ocispec.Descriptor
	}
	seen := map[digest.Digest]bool{}
	stack := make([]item, 0, len(roots))
	for i := len(roots) - 1; i >= 0; i-- {
		stack = append(stack, item{desc: roots[i]})
	}
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[it.desc.Digest] {
			continue
		}
		seen[it.desc.Digest] = true
		descend, err := visit(it.desc, it.parent)
		if err != nil {
			return err
		}
		if !descend || !HasChildren(it.desc.MediaType) {
			continue
		}
		kids, err := s.Children(ctx, it.desc)
		if err != nil {
			if onErr == nil {
				return fmt.Errorf("walk from %s: %w", it.desc.Digest, err)
			}
			onErr(it.desc, it.parent, err)
			continue
		}
		parent := it.desc
		for i := len(kids) - 1; i >= 0; i-- {
			stack = append(stack, item{desc: kids[i], parent: &parent})
		}
	}
	return nil
}
