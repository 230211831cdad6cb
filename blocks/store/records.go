package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// LookupMember returns the member recorded for the raw block raw under
// compression c. found is false if no member is recorded, or if the record
// is wrong: unreadable, its member blob absent or damaged, or a member that
// does not hold raw (checked by decompressing it, once per process; see
// CheckMember). A wrong record is removed, so the caller makes the member
// again and RecordMember writes a good record: the member index rebuilds
// itself instead of failing every export of the block.
func (s *Store) LookupMember(ctx context.Context, raw digest.Digest, c blocks.Compression) (ocispec.Descriptor, bool, error) {
	rel, err := memberRecord(raw, c)
	if err != nil {
		return ocispec.Descriptor{}, false, err
	}
	desc, err := s.readRecord(rel)
	if errors.Is(err, os.ErrNotExist) {
		return ocispec.Descriptor{}, false, nil
	}
	if err != nil {
		// A damaged record (a crash while it was written, tampering) means
		// "not known"; the next RecordMember replaces it.
		s.dropRecord(rel)
		return ocispec.Descriptor{}, false, nil
	}
	if s.memberChecks.checked(raw, c, desc.Digest) {
		if ok, err := s.present(ctx, desc.Digest, desc.Size); err != nil || ok {
			return desc, ok, err
		}
		return ocispec.Descriptor{}, false, nil
	}
	ok, err := s.present(ctx, desc.Digest, desc.Size)
	if err != nil || !ok {
		return ocispec.Descriptor{}, false, err
	}
	if err := s.CheckMember(ctx, raw, c, desc); err != nil {
		if ctx.Err() != nil {
			return ocispec.Descriptor{}, false, ctx.Err()
		}
		s.dropRecord(rel)
		return ocispec.Descriptor{}, false, nil
	}
	s.memberChecks.add(raw, c, desc.Digest)
	return desc, true, nil
}

// dropRecord removes a wrong member record (best effort: it is a cache).
func (s *Store) dropRecord(rel string) {
	_ = os.Remove(s.path(rel))
}

// RecordMember records that member holds the raw block raw under compression
// c. The record is replaced atomically; the last writer wins, which is fine
// because any recorded member is a valid encoding of the block.
func (s *Store) RecordMember(ctx context.Context, raw digest.Digest, c blocks.Compression, member ocispec.Descriptor) error {
	rel, err := memberRecord(raw, c)
	if err != nil {
		return err
	}
	if err := member.Digest.Validate(); err != nil {
		return fmt.Errorf("record member of %s: member digest %q: %w", raw, member.Digest, ErrInvalid)
	}
	// Not fsynced: the member index is a cache that can be rebuilt from
	// block-set manifests, LookupMember treats a damaged record as absent and
	// checks the member blob is present.
	if err := s.writeRecord(rel, member, false); err != nil {
		return err
	}
	return nil
}

func memberRecord(raw digest.Digest, c blocks.Compression) (string, error) {
	if c != blocks.Gzip && c != blocks.Zstd {
		return "", fmt.Errorf("compression %q: %w", c, ErrInvalid)
	}
	if err := checkSHA256(raw); err != nil {
		return "", err
	}
	return path.Join(membersDir, string(c), raw.Encoded()), nil
}

// RecordBlock records desc (a raw block or a tree block added by `blockfile
// block add`) as a gc root, in blockfile/blocks/<hex>, so that blocks waiting
// to be imported by a build survive gc without bloating index.json. The blob
// must be present.
func (s *Store) RecordBlock(ctx context.Context, desc ocispec.Descriptor) error {
	if err := checkSHA256(desc.Digest); err != nil {
		return err
	}
	ok, err := s.Exists(ctx, desc.Digest)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("record block %s (%s): %w", desc.Digest, s.BlobPath(desc.Digest), ErrNotFound)
	}
	return s.writeRecord(path.Join(blockRootDir, desc.Digest.Encoded()), desc, true)
}

// RecordedBlocks returns the blocks recorded with RecordBlock.
func (s *Store) RecordedBlocks(ctx context.Context) ([]ocispec.Descriptor, error) {
	ents, err := os.ReadDir(s.path(blockRootDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list recorded blocks: %w", err)
	}
	var out []ocispec.Descriptor
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if checkSHA256(digest.NewDigestFromEncoded(digest.SHA256, e.Name())) != nil {
			continue
		}
		desc, err := s.readRecord(path.Join(blockRootDir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, desc)
	}
	return out, nil
}

// ForgetBlock removes the gc-root record of d (the blob stays until gc).
func (s *Store) ForgetBlock(ctx context.Context, d digest.Digest) error {
	if err := checkSHA256(d); err != nil {
		return err
	}
	p := s.path(path.Join(blockRootDir, d.Encoded()))
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forget block %s: %w", d, err)
	}
	return nil
}

func checkSHA256(d digest.Digest) error {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("block digest %q: want sha256:<64 hex>: %w", d, ErrInvalid)
	}
	return nil
}

func (s *Store) readRecord(rel string) (ocispec.Descriptor, error) {
	p := s.path(rel)
	b, err := readSmall(p, maxRecordSize)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var desc ocispec.Descriptor
	if err := json.Unmarshal(b, &desc); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read %s: %w", p, err)
	}
	if err := desc.Digest.Validate(); err != nil || desc.Size < 0 {
		return ocispec.Descriptor{}, fmt.Errorf("read %s: bad descriptor: %w", p, ErrInvalid)
	}
	return desc, nil
}

func (s *Store) writeRecord(rel string, desc ocispec.Descriptor, durable bool) error {
	b, err := json.Marshal(desc)
	if err != nil {
		return fmt.Errorf("encode %s: %w", rel, err)
	}
	if err := os.MkdirAll(s.path(path.Dir(rel)), 0o755); err != nil {
		return err
	}
	return s.replaceFile(rel, b, durable)
}
