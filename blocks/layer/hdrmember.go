package layer

import (
	"encoding/binary"
	"hash/crc32"
	"io"

	"github.com/blockfile/blockfile/blocks"
)

// The header member (m_hdr) of a block entry holds the entry's raw tar header
// record(s) and nothing else. It is encoded without compression, in a fixed way,
// so that any implementation rebuilds it byte for byte from the raw bytes kept in
// the stub (docs/FORMAT.md, "Header member").

const (
	// storedBlockMax is the largest deflate stored block.
	storedBlockMax = 65535
	// rawBlockMax is the largest zstd block (Block_Maximum_Size, 128 KiB).
	rawBlockMax = 128 << 10
)

// gzipFixedHeader: ID1 ID2, CM=8 (deflate), FLG=0, MTIME=0, XFL=0, OS=255.
var gzipFixedHeader = [10]byte{0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff}

// HeaderMemberSize returns the size of the header member of raw bytes of
// length n under c.
func HeaderMemberSize(c blocks.Compression, n int) int64 {
	if c == blocks.Zstd {
		nb := (n + rawBlockMax - 1) / rawBlockMax
		if nb == 0 {
			nb = 1
		}
		return int64(4+1+fcsLen(uint64(n))) + int64(nb)*3 + int64(n)
	}
	nb := (n + storedBlockMax - 1) / storedBlockMax
	if nb == 0 {
		nb = 1
	}
	return 10 + int64(nb)*5 + int64(n) + 8
}

// WriteHeaderMember writes the deterministic header member of raw to w.
func WriteHeaderMember(w io.Writer, c blocks.Compression, raw []byte) error {
	if c == blocks.Zstd {
		return writeZstdRaw(w, raw)
	}
	return writeGzipStored(w, raw)
}

// AppendHeaderMember appends the deterministic header member of raw to dst.
func AppendHeaderMember(dst []byte, c blocks.Compression, raw []byte) []byte {
	b := &appendWriter{dst}
	_ = WriteHeaderMember(b, c, raw) // appendWriter never fails
	return b.b
}

type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }

// writeGzipStored writes gzipFixedHeader, then raw as deflate stored blocks
// of at most 65535 bytes (BFINAL set on the last; one empty final block if raw
// is empty), then CRC-32 and ISIZE, little endian.
func writeGzipStored(w io.Writer, raw []byte) error {
	if _, err := w.Write(gzipFixedHeader[:]); err != nil {
		return err
	}
	rest := raw
	for {
		n := min(len(rest), storedBlockMax)
		var h [5]byte
		if n == len(rest) {
			h[0] = 1 // BFINAL=1, BTYPE=00; the remaining bits pad to the byte boundary
		}
		binary.LittleEndian.PutUint16(h[1:3], uint16(n))
		binary.LittleEndian.PutUint16(h[3:5], ^uint16(n))
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		if _, err := w.Write(rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
		if len(rest) == 0 {
			break
		}
	}
	var t [8]byte
	binary.LittleEndian.PutUint32(t[0:4], crc32.ChecksumIEEE(raw))
	binary.LittleEndian.PutUint32(t[4:8], uint32(len(raw)))
	_, err := w.Write(t[:])
	return err
}

// fcsLen is the Frame_Content_Size field length used for a single-segment
// frame of n bytes: the smallest that holds n.
func fcsLen(n uint64) int {
	switch {
	case n < 256:
		return 1
	case n < 65536+256:
		return 2
	case n <= 0xffffffff:
		return 4
	}
	return 8
}

// writeZstdRaw writes a zstd frame: magic, a frame header with
// Single_Segment_flag set, no checksum, no dictionary and the smallest
// Frame_Content_Size field, then raw as Raw blocks of at most 128 KiB
// (Last_Block set on the last; one empty Raw block if raw is empty).
func writeZstdRaw(w io.Writer, raw []byte) error {
	n := uint64(len(raw))
	h := []byte{0x28, 0xb5, 0x2f, 0xfd, 0}
	switch fcsLen(n) {
	case 1:
		h[4] = 0<<6 | 1<<5
		h = append(h, byte(n))
	case 2:
		h[4] = 1<<6 | 1<<5
		h = binary.LittleEndian.AppendUint16(h, uint16(n-256))
	case 4:
		h[4] = 2<<6 | 1<<5
		h = binary.LittleEndian.AppendUint32(h, uint32(n))
	default:
		h[4] = 3<<6 | 1<<5
		h = binary.LittleEndian.AppendUint64(h, n)
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	rest := raw
	for {
		k := min(len(rest), rawBlockMax)
		bh := uint32(k) << 3 // Block_Type 0 (Raw)
		if k == len(rest) {
			bh |= 1 // Last_Block
		}
		if _, err := w.Write([]byte{byte(bh), byte(bh >> 8), byte(bh >> 16)}); err != nil {
			return err
		}
		if _, err := w.Write(rest[:k]); err != nil {
			return err
		}
		rest = rest[k:]
		if len(rest) == 0 {
			return nil
		}
	}
}
