package layer

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// MemberFetcher opens stored blobs. Fetch must verify what it returns: Read
// reports an error at EOF when the bytes do not match desc's digest or size.
// Hydrate verifies digest and size again itself; it trusts nothing it reads.
type MemberFetcher interface {
	Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// MemberStore is what Split needs from the store: the member index (raw block
// -> member, per compression), blob existence, and verified writes. It also
// fetches: a member the store already holds is copied into the standard layer
// rather than compressed again, so one block keeps one encoding for good.
// *store.Store implements it.
type MemberStore interface {
	MemberFetcher
	LookupMember(ctx context.Context, raw digest.Digest, c blocks.Compression) (ocispec.Descriptor, bool, error)
	RecordMember(ctx context.Context, raw digest.Digest, c blocks.Compression, member ocispec.Descriptor) error
	Exists(ctx context.Context, d digest.Digest) (bool, error)
	Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error
}

// SplitOptions configure Split.
type SplitOptions struct {
	// Compression of the layers and members written. Empty means gzip.
	Compression blocks.Compression

	// MinBlockSize: regular files of at least this many bytes become blocks.
	// Zero or negative means only imported files become blocks.
	MinBlockSize int64

	// IsImported reports whether the frontend recorded name (a tar name with
	// any leading "./" or "/" removed) as imported; such files become blocks
	// whatever their size, if they are not empty. May be nil.
	IsImported func(name string) bool

	// Members is where new block members are pushed and recorded, and where
	// existing ones are looked up and reused. Required.
	Members MemberStore

	// TempDir holds the spool files of block data. Empty means os.TempDir();
	// image.Export passes the store's own (store.TempDir), where the next
	// writer removes the spools of a killed export.
	TempDir string
}

// Block is one block file found by Split.
type Block struct {
	// Path is the entry's name in the tar, as written there.
	Path string
	// Raw is the block: digest and size of the file's bytes.
	Raw blocks.Ref
	// Member is the stored member holding the file's bytes plus tar padding,
	// with media type Compression.MemberMediaType() and the annotation
	// blocks.AnnotationBlockDigest set to Raw.Digest.
	Member ocispec.Descriptor
}

// SplitResult describes what Split wrote.
type SplitResult struct {
	// DiffID is the sha256 of the uncompressed tar: the input's, checked
	// equal to the uncompressed stream of the standard layer.
	DiffID digest.Digest
	// Standard is the block-framed standard layer (media type set for the
	// compression).
	Standard ocispec.Descriptor
	// Blocked is the blocked layer. When Blocks is empty it is the standard
	// layer itself: same bytes, same descriptor.
	Blocked ocispec.Descriptor
	// Blocks are the block files in tar order (the same member may appear
	// more than once when the same content sits at several paths).
	Blocks []Block
}

// HasBlocks reports whether the blocked layer differs from the standard one.
func (r *SplitResult) HasBlocks() bool { return len(r.Blocks) > 0 }

// LayerMediaType returns the OCI layer media type of a layer compressed with c.
func LayerMediaType(c blocks.Compression) string {
	if c == blocks.Zstd {
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayerGzip
}

func normCompression(c blocks.Compression) (blocks.Compression, error) {
	switch c {
	case "", blocks.Gzip:
		return blocks.Gzip, nil
	case blocks.Zstd:
		return blocks.Zstd, nil
	}
	return "", fmt.Errorf("unknown compression %q (want gzip or zstd)", string(c))
}

// Errors that callers may test for with errors.Is.
var (
	// ErrReservedContent: a source layer holds a regular file whose content
	// starts with blocks.StubMagic, which only stubs may.
	ErrReservedContent = errors.New("file content starts with the reserved stub magic")
	// ErrUnsafePath: an entry name (or hard-link target) is absolute,
	// contains "..", or goes through a symlink of the same layer.
	ErrUnsafePath = errors.New("unsafe path")
	// ErrBadStub: a stub document or stub entry is malformed.
	ErrBadStub = errors.New("bad stub")
	// ErrNotListed: a stub names a member that is not in the block set.
	ErrNotListed = errors.New("not listed in the block set")
	// ErrMismatch: hydrated output does not match the wanted descriptor, or
	// a member's bytes do not match their digest.
	ErrMismatch = errors.New("digest or size mismatch")
	// ErrMalformed: the blocked layer's compressed framing or tar stream is
	// malformed (cut short, trailing garbage, a skippable zstd frame, ...).
	ErrMalformed = errors.New("malformed blocked layer")
)
