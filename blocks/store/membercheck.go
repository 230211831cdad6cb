package store

import (
	"context"
	"encoding"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// ErrBadMember: a member blob does not hold the raw block a record or a
// caller says it holds.
var ErrBadMember = errors.New("member does not hold the block")

// memberChecks remembers the member records this process has checked, so
// that an export reusing a member decompresses it once.
type memberChecks struct {
	mu sync.Mutex
	ok map[memberKey]digest.Digest // (raw, compression) -> member checked to hold it
}

type memberKey struct {
	raw digest.Digest
	c   blocks.Compression
}

func (m *memberChecks) checked(raw digest.Digest, c blocks.Compression, member digest.Digest) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ok[memberKey{raw, c}] == member
}

func (m *memberChecks) add(raw digest.Digest, c blocks.Compression, member digest.Digest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ok == nil {
		m.ok = map[memberKey]digest.Digest{}
	}
	m.ok[memberKey{raw, c}] = member
}

// maxMemberRatio bounds the work of checking a member: a member expands to
// at most this many times its size (deflate's limit is 1032) plus one MiB.
const maxMemberRatio = 1100

// CheckMember checks that the blob member is a block member of compression
// c holding the raw block raw: it decompresses (verified against the
// member's digest) to raw's bytes followed by zero padding to a multiple of
// 512, as docs/FORMAT.md section 4 says. A mismatch wraps ErrBadMember.
func (s *Store) CheckMember(ctx context.Context, raw digest.Digest, c blocks.Compression, member ocispec.Descriptor) error {
	if want := c.MemberMediaType(); member.MediaType != "" && member.MediaType != want {
		return fmt.Errorf("member %s of %s: media type %q, want %q: %w", member.Digest, raw, member.MediaType, want, ErrBadMember)
	}
	if a, ok := member.Annotations[blocks.AnnotationBlockDigest]; ok && a != raw.String() {
		return fmt.Errorf("member %s of %s: annotated as the member of %s: %w", member.Digest, raw, a, ErrBadMember)
	}
	rc, err := s.Fetch(ctx, member)
	if err != nil {
		return err
	}
	defer rc.Close()
	var dec io.Reader
	switch c {
	case blocks.Gzip:
		zr, err := gzip.NewReader(rc)
		if err != nil {
			return fmt.Errorf("member %s of %s: %w: %v", member.Digest, raw, ErrBadMember, err)
		}
		defer zr.Close()
		dec = zr
	case blocks.Zstd:
		zr, err := zstd.NewReader(rc, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
		if err != nil {
			return err
		}
		defer zr.Close()
		dec = zr
	default:
		return fmt.Errorf("compression %q: %w", c, ErrInvalid)
	}
	limit := member.Size*maxMemberRatio + 1<<20
	ok, err := holdsPadded(ctxReader{ctx, io.LimitReader(dec, limit+1)}, raw, limit)
	if err != nil {
		if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrSizeMismatch) || ctx.Err() != nil {
			return err // the member blob itself is damaged, or we were stopped
		}
		return fmt.Errorf("member %s of %s: %w: %v", member.Digest, raw, ErrBadMember, err)
	}
	if !ok {
		return fmt.Errorf("member %s of %s: it holds other content: %w", member.Digest, raw, ErrBadMember)
	}
	return nil
}

// holdsPadded reports whether r is the bytes of raw followed by zeros up to
// a multiple of 512. The raw size is not known, so every split point
// within the last 512 bytes whose tail is all zeros is tried: the hash of
// all but the last 512 bytes is computed once and cloned per candidate.
func holdsPadded(r io.Reader, raw digest.Digest, limit int64) (bool, error) {
	if raw.Algorithm() != digest.SHA256 {
		return false, fmt.Errorf("raw digest %s: %w", raw, ErrInvalid)
	}
	h := raw.Algorithm().Hash()
	const pad = 512
	buf := make([]byte, 256<<10)
	var hold []byte // the last up to 512 bytes, not yet hashed
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			if total > limit {
				return false, fmt.Errorf("expands to more than %d bytes", limit)
			}
			hold = append(hold, buf[:n]...)
			if k := len(hold) - pad; k > 0 {
				h.Write(hold[:k])
				hold = append(hold[:0], hold[k:]...)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false, err
		}
	}
	if total == 0 || total%pad != 0 {
		return false, nil
	}
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return false, err
	}
	// Candidate raw sizes: len(hold) down to 1 bytes of hold, while the
	// bytes after the candidate are zeros.
	for n := len(hold); n >= 1; n-- {
		if n < len(hold) && hold[n] != 0 {
			break
		}
		c := raw.Algorithm().Hash()
		if err := c.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
			return false, err
		}
		c.Write(hold[:n])
		if digest.NewDigest(raw.Algorithm(), c) == raw {
			return true, nil
		}
	}
	return false, nil
}
