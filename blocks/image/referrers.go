package image

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// StandardReferrers returns the referrers the store recorded for the
// standard image std (a manifest, or an index and the manifests it lists)
// and, transitively, theirs: what a registry holding the standard image
// should also hold. Subjects come before what refers to them.
func StandardReferrers(ctx context.Context, s *store.Store, std ocispec.Descriptor) ([]store.Referrer, error) {
	subjects := []digest.Digest{std.Digest}
	if transport.IsIndex(std.MediaType) {
		var idx ocispec.Index
		if err := s.GetJSON(ctx, std, &idx); err != nil {
			return nil, fmt.Errorf("standard index %s: %w", std.Digest, err)
		}
		for _, m := range idx.Manifests {
			subjects = append(subjects, m.Digest)
		}
	}
	return s.ReferrersClosure(ctx, subjects...)
}

// PushReferrers pushes the referrers of the standard image std (see
// StandardReferrers) to the repository of ref, a docker:// reference (with
// or without the prefix), with the tag scheme for registries without the
// referrers API (transport.Registry.PushReferrers). It does nothing if
// there are none.
func PushReferrers(ctx context.Context, s *store.Store, std ocispec.Descriptor, reg transport.Registry, ref string) ([]store.Referrer, error) {
	refs, err := StandardReferrers(ctx, s, std)
	if err != nil || len(refs) == 0 {
		return nil, err
	}
	if err := reg.PushReferrers(ctx, ref, s, refs); err != nil {
		return nil, err
	}
	return refs, nil
}
