package layer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/internal/deflate"
)

// compressor writes independent gzip members or zstd frames, one per begin.
// Members are compressed "normally" (docs/FORMAT.md section 2): gzip at
// level 6 by the frozen copy of the standard library's deflate
// (blocks/internal/deflate), header without name, mtime 0, OS 255; zstd
// with klauspost/compress at SpeedDefault, one frame with a content
// checksum. The standard library's level 6 is what docker and BuildKit
// users get, and on real layers it is within 0.3% of GNU gzip -6 where
// klauspost's default level is 3.4% larger; Split wins the speed back by
// compressing block members on two workers. The block member (m_data) uses
// the same settings so that it depends only on the file's bytes.
type compressor struct {
	c  blocks.Compression
	gz *gzipStream
	zs *zstd.Encoder
}

func newCompressor(c blocks.Compression) (*compressor, error) {
	k := &compressor{c: c}
	var err error
	if c == blocks.Zstd {
		// One goroutine: the output must not depend on the machine.
		k.zs, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	} else {
		k.gz, err = newGzipStream()
	}
	if err != nil {
		return nil, fmt.Errorf("%s compressor: %w", c, err)
	}
	return k, nil
}

// gzipLevel is the deflate level of normally compressed gzip members.
const gzipLevel = 6

// begin starts a member written to dst; Close ends it.
func (k *compressor) begin(dst io.Writer) io.WriteCloser {
	if k.zs != nil {
		k.zs.Reset(dst)
		return k.zs
	}
	k.gz.Reset(dst)
	return k.gz
}

func (k *compressor) close() {
	if k.zs != nil {
		_ = k.zs.Close()
	}
}

// source reads the compressed blocked layer, counts the offset and tees every
// byte consumed into buf, so that a verbatim member can be copied out as is
// once its extent is known. It is an io.ByteReader so that the gzip
// decompressor reads exactly the bytes of one member and no more.
type source struct {
	br     *bufio.Reader
	off    int64  // bytes consumed from the layer
	buf    []byte // consumed bytes of the current member not yet flushed
	direct bool   // flush buf to out as it fills (the member is verbatim)
	// discard drops consumed bytes (a stub member, which is not output), so
	// that a long stub member is never held in memory.
	discard bool
	out     io.Writer
	err     error // sticky error of out
}

const (
	flushAt = 256 << 10
	// maxPending bounds what is held while a member's first entry is being
	// classified (stub or verbatim): a stub member is small, and Go's tar
	// reader caps header records at 1 MiB.
	maxPending = 8 << 20
)

func (s *source) tee(p []byte) error {
	if s.discard {
		return nil
	}
	s.buf = append(s.buf, p...)
	if s.direct {
		if len(s.buf) >= flushAt {
			return s.flush()
		}
	} else if len(s.buf) > maxPending {
		return fmt.Errorf("member at offset %d: first entry too large to classify: %w", s.off, ErrMalformed)
	}
	return nil
}

func (s *source) flush() error {
	if s.err != nil {
		return s.err
	}
	if len(s.buf) > 0 {
		if _, err := s.out.Write(s.buf); err != nil {
			s.err = err
			return err
		}
	}
	s.buf = s.buf[:0]
	return nil
}

func (s *source) ReadByte() (byte, error) {
	b, err := s.br.ReadByte()
	if err != nil {
		return 0, err
	}
	s.off++
	if s.discard {
		return b, nil
	}
	s.buf = append(s.buf, b)
	if len(s.buf) >= flushAt || (!s.direct && len(s.buf) > maxPending) {
		if err := s.tee(nil); err != nil {
			return 0, err
		}
	}
	return b, nil
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.br.Read(p)
	s.off += int64(n)
	if terr := s.tee(p[:n]); terr != nil {
		return n, terr
	}
	return n, err
}

// zstdFrame yields the bytes of exactly one zstd frame from src, parsing the
// frame format (RFC 8878) as it goes: frame header, 3-byte block headers and
// block contents, optional content checksum. It returns io.EOF at the end of
// the frame, so a decoder reading it decodes one frame and stops.
type zstdFrame struct {
	src   *source
	start int64
	q     []byte // header bytes read from src, not yet returned
	left  int64  // content bytes of the current block still to pass through
	state int    // 0 frame header, 1 block header, 2 checksum, 3 done
	last  bool
	csum  bool
	err   error
}

func (f *zstdFrame) reset(src *source) {
	*f = zstdFrame{src: src, start: src.off, q: f.q[:0]}
}

func (f *zstdFrame) fail(format string, a ...any) error {
	f.err = fmt.Errorf("zstd frame at offset %d: %s: %w", f.start, fmt.Sprintf(format, a...), ErrMalformed)
	return f.err
}

func (f *zstdFrame) readFull(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(f.src, b); err != nil {
		return nil, f.fail("cut short (%v)", err)
	}
	return b, nil
}

func (f *zstdFrame) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	for len(f.q) == 0 && f.left == 0 {
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	if len(f.q) > 0 {
		n := copy(p, f.q)
		f.q = f.q[n:]
		return n, nil
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.src.Read(p)
	f.left -= int64(n)
	if err == io.EOF || (err == nil && n == 0) {
		return n, f.fail("cut short in a block")
	}
	if err != nil {
		f.err = err
	}
	return n, err
}

// next parses the next structure of the frame into q and left.
func (f *zstdFrame) next() error {
	switch f.state {
	case 0:
		h, err := f.readFull(5)
		if err != nil {
			return err
		}
		magic := binary.LittleEndian.Uint32(h)
		if magic&0xfffffff0 == 0x184d2a50 {
			return f.fail("skippable frames are not allowed in a blocked layer")
		}
		if magic != 0xfd2fb528 {
			return f.fail("bad magic %08x", magic)
		}
		fhd := h[4]
		if fhd&0x08 != 0 {
			return f.fail("reserved bit set in the frame header")
		}
		single := fhd&0x20 != 0
		f.csum = fhd&0x04 != 0
		n := [4]int{0, 1, 2, 4}[fhd&3]
		if !single {
			n++ // Window_Descriptor
		}
		switch fhd >> 6 {
		case 0:
			if single {
				n++
			}
		case 1:
			n += 2
		case 2:
			n += 4
		case 3:
			n += 8
		}
		rest, err := f.readFull(n)
		if err != nil {
			return err
		}
		f.q = append(append(f.q[:0], h...), rest...)
		f.state = 1
	case 1:
		if f.last {
			if f.csum {
				f.state = 2
			} else {
				f.state = 3
			}
			return nil
		}
		h, err := f.readFull(3)
		if err != nil {
			return err
		}
		v := uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16
		f.last = v&1 != 0
		size := int64(v >> 3)
		switch (v >> 1) & 3 {
		case 0, 2: // Raw, Compressed
			if size > rawBlockMax {
				return f.fail("block of %d bytes exceeds 128 KiB", size)
			}
			f.left = size
		case 1: // RLE: one byte
			f.left = 1
		default:
			return f.fail("reserved block type")
		}
		f.q = append(f.q[:0], h...)
	case 2:
		c, err := f.readFull(4)
		if err != nil {
			return err
		}
		f.q = append(f.q[:0], c...)
		f.state = 3
	case 3:
		return io.EOF
	}
	return nil
}

// done reports whether the whole frame has been passed through.
func (f *zstdFrame) done() bool { return f.state == 3 && len(f.q) == 0 && f.left == 0 }

// Block members are compressed in pieces, in parallel, the way pigz does, so
// that one large file (a JDK's 130 MB lib/modules) does not leave a core idle.
// The member is still one gzip member, and still depends only on the block's
// bytes: the uncompressed member (data and padding) is cut every gzipChunk
// bytes; each piece is deflated by compress/flate at level 6 with the 32 KiB
// before it as the preset dictionary, and ends with a sync flush (an empty
// stored block), the last one with the final block instead. A member of at
// most gzipChunk bytes is therefore exactly compress/gzip's level 6 output.
const (
	gzipChunk = 1 << 20
	gzipDict  = 32 << 10
	// chunkDepth pieces of one member are in flight at most.
	chunkDepth = 3
)

// chunkTask is one piece of a gzip member to deflate.
type chunkTask struct {
	dict, data []byte
	last       bool
	out        bytes.Buffer
	err        error
	done       chan struct{}
}

// run deflates the piece. plain, if not nil, is a level-6 writer without
// dictionary that run may Reset and use: the first piece of a member has no
// dictionary, and most members are one piece, so this saves allocating (and
// zeroing) a deflate compressor of most of a MiB per member.
func (t *chunkTask) run(plain *deflate.Writer) {
	defer close(t.done)
	fw := plain
	if len(t.dict) > 0 || fw == nil {
		var err error
		if fw, err = deflate.NewWriterDict(&t.out, gzipLevel, t.dict); err != nil {
			t.err = err
			return
		}
	} else {
		fw.Reset(&t.out)
	}
	if _, err := fw.Write(t.data); err != nil {
		t.err = err
		return
	}
	if t.last {
		t.err = fw.Close()
	} else {
		t.err = fw.Flush()
	}
}

// chunkedGzip writes to w the gzip member of the n bytes of r, deflating its
// pieces on the goroutines that serve tasks. Up to chunkDepth pieces are in
// flight, so memory stays a few MiB whatever n is.
func chunkedGzip(ctx context.Context, w io.Writer, r io.Reader, n int64, tasks chan<- *chunkTask) error {
	if _, err := w.Write(gzipFixedHeader[:]); err != nil {
		return err
	}
	crc := crc32.NewIEEE()
	var pending []*chunkTask
	wait := func() error {
		t := pending[0]
		pending = pending[1:]
		<-t.done
		if t.err != nil {
			return t.err
		}
		_, err := w.Write(t.out.Bytes())
		return err
	}
	var dict []byte
	for off := int64(0); off < n || off == 0; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data := make([]byte, min(gzipChunk, n-off))
		if _, err := io.ReadFull(r, data); err != nil {
			return err
		}
		crc.Write(data)
		off += int64(len(data))
		t := &chunkTask{dict: dict, data: data, last: off == n, done: make(chan struct{})}
		tasks <- t
		pending = append(pending, t)
		dict = nextDict(dict, data)
		if len(pending) >= chunkDepth {
			if err := wait(); err != nil {
				return err
			}
		}
		if n == 0 {
			break
		}
	}
	for len(pending) > 0 {
		if err := wait(); err != nil {
			return err
		}
	}
	var tr [8]byte
	binary.LittleEndian.PutUint32(tr[0:4], crc.Sum32())
	binary.LittleEndian.PutUint32(tr[4:8], uint32(n))
	_, err := w.Write(tr[:])
	return err
}

// nextDict returns the last 32 KiB of dict followed by data: the dictionary
// of the piece after data.
func nextDict(dict, data []byte) []byte {
	if len(data) >= gzipDict {
		return data[len(data)-gzipDict:]
	}
	d := append(append([]byte{}, dict...), data...)
	return d[max(0, len(d)-gzipDict):]
}

// gzipStream writes one gzip member in one deflate stream: the fixed header
// (no name, MTIME 0, XFL 0, OS 255), the data deflated at level 6 by the
// frozen compressor (blocks/internal/deflate), CRC-32 and ISIZE: byte for
// byte what compress/gzip at level 6 writes with the Go release that
// compressor was copied from, and the same with any later one.
type gzipStream struct {
	w       io.Writer
	fw      *deflate.Writer
	crc     uint32
	n       uint32
	started bool
	err     error
}

func newGzipStream() (*gzipStream, error) {
	fw, err := deflate.NewWriter(io.Discard, gzipLevel)
	if err != nil {
		return nil, err
	}
	return &gzipStream{fw: fw}, nil
}

// Reset starts a new member written to w.
func (z *gzipStream) Reset(w io.Writer) {
	*z = gzipStream{w: w, fw: z.fw}
	z.fw.Reset(w)
}

func (z *gzipStream) header() error {
	if !z.started {
		z.started = true
		if _, err := z.w.Write(gzipFixedHeader[:]); err != nil {
			z.err = err
		}
	}
	return z.err
}

func (z *gzipStream) Write(p []byte) (int, error) {
	if err := z.header(); err != nil {
		return 0, err
	}
	z.crc = crc32.Update(z.crc, crc32.IEEETable, p)
	z.n += uint32(len(p))
	n, err := z.fw.Write(p)
	if err != nil {
		z.err = err
	}
	return n, err
}

// Close ends the member (writing the header first if nothing was written).
func (z *gzipStream) Close() error {
	if err := z.header(); err != nil {
		return err
	}
	if err := z.fw.Close(); err != nil {
		z.err = err
		return err
	}
	var tr [8]byte
	binary.LittleEndian.PutUint32(tr[0:4], z.crc)
	binary.LittleEndian.PutUint32(tr[4:8], z.n)
	_, err := z.w.Write(tr[:])
	return err
}
