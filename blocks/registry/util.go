package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/store"
)

// statBlob returns the size of blob d in s, or -1 if absent.
func statBlob(s *store.Store, d digest.Digest) (int64, error) {
	size, ok, err := s.BlobSize(context.Background(), d)
	if err != nil || !ok {
		return -1, err
	}
	return size, nil
}

// getJSON reads a small verified JSON document through f.
func getJSON(ctx context.Context, f bundle.Fetcher, desc ocispec.Descriptor, v any) error {
	if desc.Size < 0 || desc.Size > maxManifest {
		return fmt.Errorf("%s: size %d is not that of a manifest", desc.Digest, desc.Size)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return fmt.Errorf("%s: %w", desc.Digest, err)
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return fmt.Errorf("%s: content does not match its descriptor: %w", desc.Digest, store.ErrDigestMismatch)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", desc.Digest, err)
	}
	return nil
}
