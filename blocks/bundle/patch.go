package bundle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
)

// Patches. An upgrade changes a few files of a layer; the layer's blocked
// form then changes too, although most of its members (the runs of small
// files between blocks, which are not blocks themselves) are byte for byte
// the ones of the previous version, which the target already holds. The
// same goes for the block set (a few member digests change in a list of
// hundreds) and the config. Rather than shipping such a blob whole, a
// bundle may ship a patch: the blob compressed by zstd with a blob the
// target holds (its base) as raw dictionary, what `zstd --patch-from` does.
// Unchanged members and JSON lines become references into the base: on
// the scenario's curl upgrade the opt layer's block set (5.6 KB) travels
// in 152 bytes. Gzip blocked layers get a finer patch, described member by
// member on the uncompressed side (gzipmembers.go).
//
// The patch is a tar entry of its own, named by its own digest, so the
// layout inside the bundle stays valid content-addressed storage; apply
// rebuilds the blob from the patch and the base (read from the store and
// verified) and checks the result against the blob's digest and size, in
// the check pass, which leaves it in a temp file for the ingest pass.

// PatchZstdDict is Patch.Encoding: one zstd frame (RFC 8878) whose decoder
// is given the whole base blob as raw content dictionary (history before
// the frame); decoded, it is exactly the blob.
const PatchZstdDict = "zstd-dict"

// Limits of patches. The base is held in memory while a patch is made or
// applied (zstd needs its dictionary whole), so bases and the blobs
// patched are bounded; bigger blobs travel whole.
const (
	maxPatchBase   = 64 << 20
	maxPatchTarget = 64 << 20
	maxPatchWindow = 256 << 20 // a frame's window covers base + blob
	minPatchTarget = 512       // below this a patch cannot save much

	// MaxPatchedBytes bounds the bytes of all the blobs of one bundle that
	// travel as patches: apply rebuilds each once (decoding, and deflating
	// member patches and deltas) in its check pass (rebuild.go), so this and
	// MaxDeflatedBytes are the bundle's budget of patch work. Create patches no more; apply
	// refuses a header that declares more, before reading any patch.
	MaxPatchedBytes = 1 << 30
)

// ErrBound: an input exceeds one of the limits of docs/FORMAT.md section
// 9. The error says which.
var ErrBound = errors.New("exceeds a bound of the bundle format")

// Patch says that a blob travels as a patch against a blob the target
// already holds.
type Patch struct {
	// Encoding is PatchZstdDict.
	Encoding string `json:"encoding"`

	// Base is the blob the patch is decoded against; the target store must
	// hold it (it counts in Header.Requires).
	Base BlobRef `json:"base"`

	// Digest and Size are those of the patch bytes: the tar entry is
	// blobs/sha256/<Digest hex>.
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`

	// Path, BasePath and BaseChoice are informative, for block deltas
	// (PatchDeltaMember): the block's path in the new image, the base's in
	// the image the site holds, and how the base was chosen.
	Path string `json:"path,omitempty"`
	// Block is, for a block delta, the raw block the delta rebuilds (what
	// the stubs name): the member holds its bytes and tar padding.
	Block      *BlobRef `json:"block,omitempty"`
	BasePath   string   `json:"basePath,omitempty"`
	BaseChoice string   `json:"baseChoice,omitempty"`
}

// BlobRef names a blob by digest and size.
type BlobRef struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// entry is the descriptor of the tar entry that carries b: the blob itself,
// or its patch.
func (b Blob) entry() ocispec.Descriptor {
	if b.Patch != nil {
		return ocispec.Descriptor{MediaType: "application/zstd", Digest: b.Patch.Digest, Size: b.Patch.Size}
	}
	return b.Descriptor()
}

// checkPatch validates a patch read from a header.
func (p *Patch) check(b Blob) error {
	if p.Encoding != PatchZstdDict && p.Encoding != PatchZstdGzipMembers && p.Encoding != PatchDeltaMember {
		return fmt.Errorf("blob %s: patch encoding %q: this blockfile reads %q, %q and %q", b.Digest, p.Encoding, PatchZstdDict, PatchZstdGzipMembers, PatchDeltaMember)
	}
	for _, d := range []digest.Digest{p.Digest, p.Base.Digest} {
		if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
			return fmt.Errorf("blob %s: patch: %q is not a sha256 digest", b.Digest, d)
		}
	}
	if p.Base.Digest == b.Digest {
		return fmt.Errorf("blob %s: patch against itself", b.Digest)
	}
	if p.Encoding == PatchDeltaMember {
		return p.checkDelta(b)
	}
	if p.Size <= 0 || p.Base.Size <= 0 || p.Base.Size > maxPatchBase || b.Size > maxPatchTarget {
		return fmt.Errorf("blob %s (%d bytes): patch of %d bytes against %s (%d bytes) is out of bounds (base and blob at most %d bytes)",
			b.Digest, b.Size, p.Size, p.Base.Digest, p.Base.Size, int64(maxPatchBase))
	}
	if p.Base.Digest == b.Digest {
		return fmt.Errorf("blob %s: patch against itself", b.Digest)
	}
	return nil
}

// loadBase reads a patch base from s, verified, into memory (bounded by
// maxPatchBase through Patch.check).
func loadBase(ctx context.Context, s *store.Store, ref BlobRef) ([]byte, error) {
	rc, err := s.Fetch(ctx, ocispec.Descriptor{Digest: ref.Digest, Size: ref.Size})
	if err != nil {
		return nil, fmt.Errorf("patch base %s: %w", ref.Digest, err)
	}
	defer rc.Close()
	buf := make([]byte, 0, ref.Size)
	w := bytes.NewBuffer(buf)
	if _, err := io.Copy(w, io.LimitReader(rc, ref.Size+1)); err != nil {
		return nil, fmt.Errorf("patch base %s: %w", ref.Digest, err)
	}
	if int64(w.Len()) != ref.Size {
		return nil, fmt.Errorf("patch base %s: %d bytes, want %d", ref.Digest, w.Len(), ref.Size)
	}
	return w.Bytes(), nil
}

// openPatched returns a reader of blob b rebuilt from its patch (read from
// r) and its base, read from s and verified. The reader yields at most
// b.Size+1 bytes; callers verify digest and size. close releases what the
// decoder holds (call it when done, also after an error). budget counts the
// deflate work of member patches across one pass over the bundle (a block
// delta's deflate work is its block's declared size, at most maxDeltaRaw).
func openPatched(ctx context.Context, s *store.Store, b Blob, r io.Reader, budget *deflateBudget) (io.Reader, func(), error) {
	if b.Patch.Encoding == PatchDeltaMember {
		return unpatchDelta(ctx, s, b, r)
	}
	base, err := loadBase(ctx, s, b.Patch.Base)
	if err != nil {
		return nil, nil, err
	}
	if b.Patch.Encoding == PatchZstdGzipMembers {
		return unpatchMembers(r, b, base, budget)
	}
	return unpatch(r, b, base)
}

// unpatch returns a reader of the blob b rebuilt from its patch (read from
// r) and base. The reader yields at most b.Size+1 bytes (so a size check
// downstream sees a blob that is too long); callers verify digest and size.
// close releases the decoder.
func unpatch(r io.Reader, b Blob, base []byte) (rd io.Reader, close func(), err error) {
	dec, err := dictDecoder(r, b, base)
	if err != nil {
		return nil, nil, err
	}
	return &patchErr{r: io.LimitReader(dec, b.Size+1), b: b}, dec.Close, nil
}

// dictDecoder decodes the zstd patch of b read from r with dict as raw
// content dictionary, within the patch limits.
func dictDecoder(r io.Reader, b Blob, dict []byte) (*zstd.Decoder, error) {
	dec, err := zstd.NewReader(r,
		zstd.WithDecoderDictRaw(0, dict),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxPatchWindow),
		zstd.WithDecoderMaxMemory(maxPatchWindow),
		zstd.IgnoreChecksum(false),
	)
	if err != nil {
		return nil, fmt.Errorf("blob %s: patch: %w", b.Digest, err)
	}
	return dec, nil
}

// patchErr names the blob in decoding errors.
type patchErr struct {
	r io.Reader
	b Blob
}

func (p *patchErr) Read(q []byte) (int, error) {
	n, err := p.r.Read(q)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("blob %s: patch %s against %s: %w", p.b.Digest, p.b.Patch.Digest, p.b.Patch.Base.Digest, err)
	}
	return n, err
}

// makePatch writes to w the patch of target (read from r, size bytes)
// against base. Single-threaded at zstd's best level, so the same inputs
// give the same bytes; the window covers base and blob, so a member of the
// base is found wherever it lies.
func makePatch(w io.Writer, r io.Reader, size int64, base []byte) error {
	window := 1 << bits.Len64(uint64(int64(len(base))+size))
	if window < zstd.MinWindowSize {
		window = zstd.MinWindowSize
	}
	enc, err := zstd.NewWriter(w,
		zstd.WithEncoderDictRaw(0, base),
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(window),
	)
	if err != nil {
		return err
	}
	if _, err := io.Copy(enc, r); err != nil {
		enc.Close()
		return err
	}
	return enc.Close()
}

// patchFiles serves the patches made for a bundle (temp files) and
// everything else from the store.
type patchFiles struct {
	files map[digest.Digest]string
	next  Fetcher
}

func (p patchFiles) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	path, ok := p.files[desc.Digest]
	if !ok {
		return p.next.Fetch(ctx, desc)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{store.VerifyReader(f, desc), f}, nil
}
