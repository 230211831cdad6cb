package delta

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/bits"

	"github.com/klauspost/compress/zstd"
)

// Encoder tuning. seedLen bytes seed a match; the base index has one slot
// per 2 base bytes (at most 2^25 slots, 128 MiB); a candidate match is
// followed for at most maxProbe bytes when bsdiff weighs it against the
// current alignment (bsdiff follows it to its end, which is quadratic in
// repetitive data).
const (
	seedLen  = 8
	maxBits  = 25
	maxProbe = 1 << 12
	// window of the zstd frame: the records of a region are compressed
	// against the 8 MiB before them, where a relinked binary's repeated
	// small differences are.
	window = 8 << 20
)

// index maps the hash of each seedLen bytes of the base to the last base
// offset holding them (+1; 0 is empty).
type index struct {
	tab  []uint32
	bits uint
}

func seed(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

func (x *index) slot(v uint64) uint64 { return (v * 0x9E3779B97F4A7C15) >> (64 - x.bits) }

func newIndex(ctx context.Context, base []byte) (*index, error) {
	b := uint(bits.Len64(uint64(len(base)/2 + 1)))
	b = max(10, min(b, maxBits))
	x := &index{tab: make([]uint32, 1<<b), bits: b}
	for i := 0; i+seedLen <= len(base); i++ {
		if i&(1<<24-1) == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		x.tab[x.slot(seed(base[i:]))] = uint32(i + 1)
	}
	return x, nil
}

// MaxBase is the largest base Encode takes (the index stores 32-bit offsets).
const MaxBase = 1<<32 - 2

// Encode writes to w the delta of target against base. The same inputs
// give the same bytes (single-threaded zstd at a fixed level).
func Encode(ctx context.Context, w io.Writer, base, target []byte) error {
	if int64(len(base)) > MaxBase {
		return io.ErrShortBuffer
	}
	sum := sha256.Sum256(target)
	hdr := []byte(Magic)
	hdr = binary.AppendUvarint(hdr, uint64(len(base)))
	hdr = binary.AppendUvarint(hdr, uint64(len(target)))
	hdr = append(hdr, sum[:]...)
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	zw, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(window),
		zstd.WithEncoderCRC(true),
	)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 1<<20)
	if err := diff(ctx, bw, base, target); err != nil {
		zw.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		zw.Close()
		return err
	}
	return zw.Close()
}

// diff writes the records of target against base: bsdiff's main loop,
// with the longest-match search replaced by one hash probe.
func diff(ctx context.Context, w *bufio.Writer, old, new []byte) error {
	oldsize, newsize := len(old), len(new)
	var x *index
	if oldsize >= seedLen {
		var err error
		if x, err = newIndex(ctx, old); err != nil {
			return err
		}
	}
	search := func(scan int) (pos, n int) {
		if x == nil || scan+seedLen > newsize {
			return 0, 0
		}
		c := x.tab[x.slot(seed(new[scan:]))]
		if c == 0 {
			return 0, 0
		}
		p := int(c - 1)
		lim := min(oldsize-p, newsize-scan, maxProbe)
		k := 0
		for k+8 <= lim && seed(old[p+k:]) == seed(new[scan+k:]) {
			k += 8
		}
		for k < lim && old[p+k] == new[scan+k] {
			k++
		}
		if k < seedLen {
			return 0, 0
		}
		return p, k
	}
	oldAt := func(i int) int {
		if i < 0 || i >= oldsize {
			return -1
		}
		return int(old[i])
	}
	var cur int // the decoder's base offset
	var buf [3 * binary.MaxVarintLen64]byte
	emit := func(from, lenf, extraFrom, extraTo int) error {
		n, m := lenf, extraTo-extraFrom
		if n+m == 0 {
			return nil
		}
		b := binary.AppendVarint(buf[:0], int64(from-cur))
		b = binary.AppendUvarint(b, uint64(n))
		b = binary.AppendUvarint(b, uint64(m))
		if _, err := w.Write(b); err != nil {
			return err
		}
		cur = from + n
		for i := 0; i < n; i++ {
			w.WriteByte(new[extraFrom-n+i] - old[from+i])
		}
		_, err := w.Write(new[extraFrom:extraTo])
		return err
	}

	scan, length, pos := 0, 0, 0
	lastscan, lastpos, lastoffset := 0, 0, 0
	steps := 0
	for scan < newsize {
		oldscore := 0
		scan += length
		for scsc := scan; scan < newsize; scan++ {
			if steps++; steps&(1<<20-1) == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			pos, length = search(scan)
			for ; scsc < scan+length; scsc++ {
				if oldAt(scsc+lastoffset) == int(new[scsc]) {
					oldscore++
				}
			}
			if (length == oldscore && length != 0) || length > oldscore+8 {
				break
			}
			if oldAt(scan+lastoffset) == int(new[scan]) {
				oldscore--
			}
		}
		if length == oldscore && scan != newsize {
			continue
		}
		// Extend the previous match forward and the new one backward,
		// approximately (keeping more equal bytes than unequal ones).
		s, sf, lenf := 0, 0, 0
		for i := 0; lastscan+i < scan && lastpos+i < oldsize; {
			if old[lastpos+i] == new[lastscan+i] {
				s++
			}
			i++
			if s*2-i > sf*2-lenf {
				sf, lenf = s, i
			}
		}
		lenb := 0
		if scan < newsize {
			s, sb := 0, 0
			for i := 1; scan >= lastscan+i && pos >= i; i++ {
				if old[pos-i] == new[scan-i] {
					s++
				}
				if s*2-i > sb*2-lenb {
					sb, lenb = s, i
				}
			}
		}
		if lastscan+lenf > scan-lenb {
			overlap := (lastscan + lenf) - (scan - lenb)
			s, ss, lens := 0, 0, 0
			for i := 0; i < overlap; i++ {
				if new[lastscan+lenf-overlap+i] == old[lastpos+lenf-overlap+i] {
					s++
				}
				if new[scan-lenb+i] == old[pos-lenb+i] {
					s--
				}
				if s > ss {
					ss, lens = s, i+1
				}
			}
			lenf += lens - overlap
			lenb -= lens
		}
		if err := emit(lastpos, lenf, lastscan+lenf, scan-lenb); err != nil {
			return err
		}
		lastscan, lastpos, lastoffset = scan-lenb, pos-lenb, pos-scan
	}
	return nil
}
