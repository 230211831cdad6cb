package bundle

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/delta"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// Block deltas. A security rebuild relinks every binary of a package, a JDK
// update rewrites lib/modules, an app jar gets one class changed: the files
// differ a little, so their blocks are new and would travel whole. A bundle
// may instead carry such a block as a delta (blocks/delta: bsdiff records in
// one zstd frame) of its uncompressed member against a block member the site
// holds. The site inflates the base member, rebuilds the new member's
// uncompressed bytes from the delta (which checks them against the sha256 the
// delta names), deflates them again exactly as export does
// (layer.WriteBlockMember: the frozen level-6 deflater in 1 MiB pieces, so the
// result does not depend on the Go release), and checks the member against
// its digest like every blob. At create, a block whose member the pinned
// deflater does not reproduce (made by another encoder) travels whole.
//
// On the scenario's JRE upgrade lib/modules (129 MB, 55 MB as a member)
// travels in 1.2 MB, libjvm.so (24 MB) in 1.4 MB; docs/BENCHMARKS.md.

// PatchDeltaMember is Patch.Encoding for a gzip block member rebuilt from a
// delta (blocks/delta, version 1) of its uncompressed bytes against the
// uncompressed bytes of the base member, then deflated as layer.WriteBlockMember does.
const PatchDeltaMember = "delta-gzip-member"

// Limits of block deltas: the base's uncompressed bytes are held in memory
// at apply (the target streams through the deflater); at create base and
// target are, plus the index (at most 128 MiB).
const (
	maxDeltaRaw = 256 << 20
	// maxDeltaBlob bounds a rebuilt member: deflate never grows data by
	// more than 5 bytes per 16 KiB stored block, plus the gzip framing.
	maxDeltaBlob = maxDeltaRaw + maxDeltaRaw/1024 + 1<<20
)

// deltaWorth reports whether a delta of n bytes is worth shipping instead
// of a member of size bytes: it must save an eighth and a patch's overhead.
func deltaWorth(n, size int64) bool {
	return n+patchOverhead < size-size/8
}

// deltaDeflate is the deflate work of a block delta: its block and the tar
// padding, which the site deflates into the member.
func deltaDeflate(block BlobRef) int64 { return block.Size + (512-block.Size%512)%512 }

// deltaDeflate sums the deflate work of the block deltas of h (each block
// at most maxDeltaRaw, checked by Patch.check).
func (h *Header) deltaDeflate() int64 {
	var n int64
	for _, b := range h.Blobs {
		if b.Patch != nil && b.Patch.Encoding == PatchDeltaMember && b.Patch.Block != nil {
			n += deltaDeflate(*b.Patch.Block)
		}
	}
	return n
}

// checkDelta validates a block-delta patch read from a header.
func (p *Patch) checkDelta(b Blob) error {
	if b.Kind != KindBlock || b.MediaType != blocks.MediaTypeMemberGzip {
		return fmt.Errorf("blob %s: a %s patch rebuilds gzip block members, not %s (%s)", b.Digest, PatchDeltaMember, b.Kind, b.MediaType)
	}
	if p.Block == nil || p.Block.Digest.Validate() != nil || p.Block.Digest.Algorithm() != digest.SHA256 || p.Block.Size < 0 || p.Block.Size > maxDeltaRaw {
		return fmt.Errorf("blob %s: a %s patch must name the raw block it rebuilds (a sha256 digest, at most %d bytes): %w", b.Digest, PatchDeltaMember, maxDeltaRaw, ErrBound)
	}
	if p.Size <= 0 || p.Base.Size <= 0 || p.Base.Size > maxDeltaBlob || b.Size > maxDeltaBlob {
		return fmt.Errorf("blob %s (%d bytes): delta of %d bytes against %s (%d bytes) is out of bounds (members at most %d bytes): %w",
			b.Digest, b.Size, p.Size, p.Base.Digest, p.Base.Size, int64(maxDeltaBlob), ErrBound)
	}
	return nil
}

// inflateMember reads the gzip member d from s, verified, and returns its
// uncompressed bytes (at most maxDeltaRaw).
func inflateMember(ctx context.Context, s *store.Store, ref BlobRef) ([]byte, error) {
	rc, err := s.Fetch(ctx, blobRefDesc(ref))
	if err != nil {
		return nil, fmt.Errorf("delta base %s: %w", ref.Digest, err)
	}
	defer rc.Close()
	hint := memberRawSize(s, blobRefDesc(ref))
	return inflate(rc, ref.Digest, hint)
}

// inflate reads one gzip member from r (and checks r ends there).
func inflate(r io.Reader, d digest.Digest, hint int64) ([]byte, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	zr, err := kgzip.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", d, err)
	}
	zr.Multistream(false)
	buf := bytes.NewBuffer(make([]byte, 0, min(max(hint, 0), maxDeltaRaw)+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(zr, maxDeltaRaw+1)); err != nil {
		return nil, fmt.Errorf("member %s: %w", d, err)
	}
	if buf.Len() > maxDeltaRaw {
		return nil, fmt.Errorf("member %s: more than %d bytes uncompressed: %w", d, maxDeltaRaw, ErrBound)
	}
	// Read to the end, so the verifying reader below checks the digest.
	if n, err := io.Copy(io.Discard, br); err != nil || n != 0 {
		return nil, fmt.Errorf("member %s: %d bytes after the gzip member: %v", d, n, err)
	}
	return buf.Bytes(), nil
}

// memberRawSize returns the uncompressed size a gzip member's trailer
// states (ISIZE, modulo 2^32), as a hint to size a buffer; 0 if unknown.
func memberRawSize(s *store.Store, desc ocispec.Descriptor) int64 {
	if desc.Size < 8 {
		return 0
	}
	f, err := s.OpenFile(desc)
	if err != nil {
		return 0
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.Reader().ReadAt(b[:], desc.Size-4); err != nil {
		return 0
	}
	return int64(binary.LittleEndian.Uint32(b[:]))
}

// openDelta reads the header of b's delta (from r) and returns its decoder
// against the base member in s, once the delta is known to rebuild the
// block the patch names.
func openDelta(ctx context.Context, s *store.Store, b Blob, r io.Reader) (*delta.Decoder, error) {
	base, err := inflateMember(ctx, s, b.Patch.Base)
	if err != nil {
		return nil, err
	}
	dec, err := delta.NewDecoder(r, base)
	if err != nil {
		return nil, fmt.Errorf("blob %s: delta %s against %s: %w", b.Digest, b.Patch.Digest, b.Patch.Base.Digest, err)
	}
	dh := dec.Header()
	if blk := b.Patch.Block; dh.TargetSize != blk.Size || digest.NewDigestFromBytes(digest.SHA256, dh.Target[:]) != blk.Digest {
		dec.Close()
		return nil, fmt.Errorf("blob %s: delta %s rebuilds %d bytes hashing to sha256:%x, not block %s (%d bytes)",
			b.Digest, b.Patch.Digest, dh.TargetSize, dh.Target, blk.Digest, blk.Size)
	}
	return dec, nil
}

// unpatchDelta returns a reader of block member b rebuilt from its delta
// (read from r) against its base member in s. At most b.Size+1 bytes come
// out; callers verify digest and size.
func unpatchDelta(ctx context.Context, s *store.Store, b Blob, r io.Reader) (io.Reader, func(), error) {
	dec, err := openDelta(ctx, s, b, r)
	if err != nil {
		return nil, nil, err
	}
	n := dec.Header().TargetSize
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		// The member holds the block and its tar padding (zeros to 512).
		pad := (512 - n%512) % 512
		err := layer.WriteBlockMember(ctx, pw, io.MultiReader(dec, bytes.NewReader(make([]byte, pad))), n+pad)
		dec.Close()
		pw.CloseWithError(err)
	}()
	stop := func() {
		cancel()
		pr.CloseWithError(errors.New("stopped"))
	}
	return &patchErr{r: io.LimitReader(pr, b.Size+1), b: b}, stop, nil
}

// makeDelta writes to w the delta of block (the bytes of the member
// target) against the uncompressed member base (both in s) if the pinned deflater rebuilds target from its
// bytes; it returns the number of bytes written, or 0 when no delta can be
// made.
func makeDelta(ctx context.Context, s *store.Store, w io.Writer, target, base, block BlobRef) (int64, error) {
	baseRaw, err := inflateMember(ctx, s, base)
	if err != nil {
		return 0, err
	}
	raw, err := inflateMember(ctx, s, target)
	if err != nil {
		return 0, err
	}
	// Exactness: the site deflates raw again; it must give this member.
	h := sha256.New()
	cw := &countingWriter{w: h}
	if err := layer.WriteBlockMember(ctx, cw, bytes.NewReader(raw), int64(len(raw))); err != nil {
		return 0, err
	}
	if cw.n != target.Size || digest.NewDigest(digest.SHA256, h) != target.Digest {
		return 0, nil // made by another deflater: ships whole
	}
	pad := (512 - block.Size%512) % 512
	if int64(len(raw)) != block.Size+pad || digest.FromBytes(raw[:block.Size]) != block.Digest {
		return 0, fmt.Errorf("member %s does not hold block %s (%d bytes)", target.Digest, block.Digest, block.Size)
	}
	dw := &countingWriter{w: w}
	if err := delta.Encode(ctx, dw, baseRaw, raw[:block.Size]); err != nil {
		return 0, fmt.Errorf("delta of %s against %s: %w", target.Digest, base.Digest, err)
	}
	return dw.n, nil
}
