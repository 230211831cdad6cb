// Package delta encodes a file as its difference from another one (its
// base): the binary delta that lets a bundle ship a rebuilt binary, JDK or
// jar as what changed in it rather than whole.
//
// The encoding is bsdiff's (Colin Percival, "Naive differences of executable
// code", 2003), with the base indexed by a hash table of 8-byte seeds instead
// of a suffix array (a suffix array of a 130 MB file takes more than 1 GiB to
// build), and the three bsdiff streams interleaved in one zstd frame instead
// of three bzip2 streams, so the decoder reads the delta front to back and
// holds only the base and the zstd window. The target is described as a
// sequence of records, each
//
//	diff:  n bytes, base[pos+i] + d[i] (mod 256): a region of the base
//	       where most bytes are equal and the rest differ by a little, as
//	       code relinked at other addresses does (the d bytes are mostly
//	       zero and compress to almost nothing)
//	extra: m bytes that are new, as they are
//	seek:  before the record, pos moves by a signed amount
//
// docs/BUNDLES.md ("Block deltas") specifies the wire format (version 1):
//
//	"BFDELTA1"                              8 bytes
//	uvarint(base size) uvarint(target size) header
//	sha256(target)                          32 bytes
//	one zstd frame (RFC 8878), holding records until target size bytes
//	  are produced, then nothing:
//	    varint(seek) uvarint(n) uvarint(m) n diff bytes, m extra bytes
//
// A record produces n+m >= 1 bytes (else the delta is refused), pos stays
// within the base, and no more than the declared target size comes out, so
// decoding does work in proportion to its output and its output is bounded
// by a size the caller checks before it starts.
package delta

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Magic starts every delta (format version 1).
const Magic = "BFDELTA1"

// Limits of decoding: the zstd window (the encoder uses 8 MiB), and what a
// header may declare.
const (
	maxWindow = 64 << 20
	// MaxSize bounds the base and target sizes a delta may declare.
	MaxSize = 1 << 40
)

// ErrCorrupt is wrapped by every error about a malformed delta.
var ErrCorrupt = errors.New("corrupt delta")

// Header is the uncompressed start of a delta.
type Header struct {
	BaseSize, TargetSize int64
	Target               [sha256.Size]byte // sha256 of the target
}

// ReadHeader reads the header of a delta from r.
func ReadHeader(r io.ByteReader) (Header, error) {
	var h Header
	for i := 0; i < len(Magic); i++ {
		c, err := r.ReadByte()
		if err != nil || c != Magic[i] {
			return h, fmt.Errorf("%w: not a blockfile delta (version 1)", ErrCorrupt)
		}
	}
	for _, p := range []*int64{&h.BaseSize, &h.TargetSize} {
		v, err := binary.ReadUvarint(r)
		if err != nil || v > MaxSize {
			return h, fmt.Errorf("%w: bad header", ErrCorrupt)
		}
		*p = int64(v)
	}
	for i := range h.Target {
		c, err := r.ReadByte()
		if err != nil {
			return h, fmt.Errorf("%w: bad header", ErrCorrupt)
		}
		h.Target[i] = c
	}
	return h, nil
}

// Decoder rebuilds a target from a delta and its base.
type Decoder struct {
	h    Header
	base []byte
	zr   *zstd.Decoder
	br   *bufio.Reader
	sum  hash.Hash
	pos  int64 // in base
	out  int64 // bytes produced
	diff int64 // left in the current diff run
	ext  int64 // left in the current extra run
	err  error
}

// NewDecoder reads the header of the delta r (which must be a
// *bufio.Reader-compatible byte reader or is wrapped in one) and returns a
// reader of the target rebuilt against base. The header must declare
// len(base) as base size. Read checks the target's sha256 at its end and
// fails with ErrCorrupt if it differs; Close releases the zstd decoder.
func NewDecoder(r io.Reader, base []byte) (*Decoder, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	h, err := ReadHeader(br)
	if err != nil {
		return nil, err
	}
	if h.BaseSize != int64(len(base)) {
		return nil, fmt.Errorf("%w: made against a base of %d bytes, given %d", ErrCorrupt, h.BaseSize, len(base))
	}
	zr, err := zstd.NewReader(br,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxWindow),
		zstd.WithDecoderMaxMemory(uint64(h.TargetSize)+(16<<20)),
		zstd.IgnoreChecksum(false),
	)
	if err != nil {
		return nil, err
	}
	return &Decoder{h: h, base: base, zr: zr, br: bufio.NewReaderSize(zr, 64<<10), sum: sha256.New()}, nil
}

// Header returns the delta's header.
func (d *Decoder) Header() Header { return d.h }

// Close releases the decoder.
func (d *Decoder) Close() { d.zr.Close() }

func (d *Decoder) fail(format string, a ...any) error {
	d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, a...)...)
	return d.err
}

// record reads the next record's control values.
func (d *Decoder) record() error {
	s, err1 := binary.ReadVarint(d.br)
	n, err2 := binary.ReadUvarint(d.br)
	m, err3 := binary.ReadUvarint(d.br)
	if err := errors.Join(err1, err2, err3); err != nil {
		return d.fail("record at output byte %d: %v", d.out, noEOF(err))
	}
	if s < -d.pos || s > int64(len(d.base))-d.pos {
		return d.fail("seek by %d from base offset %d of %d", s, d.pos, len(d.base))
	}
	d.pos += s
	left := uint64(d.h.TargetSize - d.out)
	if n > left || m > left || n+m > left || n+m == 0 {
		return d.fail("record of %d+%d bytes at output byte %d of %d", n, m, d.out, d.h.TargetSize)
	}
	if n > uint64(int64(len(d.base))-d.pos) {
		return d.fail("diff of %d bytes at base offset %d of %d", n, d.pos, len(d.base))
	}
	d.diff, d.ext = int64(n), int64(m)
	return nil
}

// Read implements io.Reader.
func (d *Decoder) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	k := 0
	for k < len(p) {
		if d.diff == 0 && d.ext == 0 {
			if d.out == d.h.TargetSize {
				break
			}
			if err := d.record(); err != nil {
				return k, err
			}
		}
		if d.diff > 0 {
			q := p[k:min(len(p), k+int(min(d.diff, 1<<30)))]
			if _, err := io.ReadFull(d.br, q); err != nil {
				return k, d.fail("diff bytes: %v", noEOF(err))
			}
			addBytes(q, d.base[d.pos:d.pos+int64(len(q))])
			d.pos += int64(len(q))
			d.diff -= int64(len(q))
			k += len(q)
			d.out += int64(len(q))
		} else {
			q := p[k:min(len(p), k+int(min(d.ext, 1<<30)))]
			if _, err := io.ReadFull(d.br, q); err != nil {
				return k, d.fail("extra bytes: %v", noEOF(err))
			}
			d.ext -= int64(len(q))
			k += len(q)
			d.out += int64(len(q))
		}
	}
	d.sum.Write(p[:k])
	if d.out == d.h.TargetSize && d.diff == 0 && d.ext == 0 {
		// The frame must end here, and the target must be the one named.
		if _, err := d.br.ReadByte(); err != io.EOF {
			if err == nil {
				return k, d.fail("data after the target's %d bytes", d.h.TargetSize)
			}
			return k, d.fail("%v", err)
		}
		if !bytes.Equal(d.sum.Sum(nil), d.h.Target[:]) {
			return k, d.fail("rebuilt target does not hash to sha256:%x", d.h.Target)
		}
		d.err = io.EOF
		if k == 0 {
			return 0, io.EOF
		}
	}
	return k, nil
}

// addBytes adds b to q byte by byte, mod 256, eight bytes at a time (the
// diff runs of a large file are most of its decoding).
func addBytes(q, b []byte) {
	const hi = 0x8080808080808080
	i := 0
	for ; i+8 <= len(q); i += 8 {
		x, y := binary.LittleEndian.Uint64(q[i:]), binary.LittleEndian.Uint64(b[i:])
		// Add the low 7 bits of each byte without carries across bytes,
		// then set each top bit to the sum of the two top bits (xor).
		binary.LittleEndian.PutUint64(q[i:], ((x&^hi)+(y&^hi))^((x^y)&hi))
	}
	for ; i < len(q); i++ {
		q[i] += b[i]
	}
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
