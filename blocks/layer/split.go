package layer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/archive/tar"

	"github.com/blockfile/blockfile/blocks"
)

// verbatimCap is the uncompressed size after which a verbatim member ends at
// the next entry boundary, so that no member of a blocked layer is large.
const verbatimCap = 1 << 20

const copyBufSize = 1 << 20

// Split reads an uncompressed tar and writes the block-framed standard layer to
// std and the blocked layer to blocked (see docs/FORMAT.md). New block members
// are pushed to opts.Members and recorded there; members it already holds are
// reused. The uncompressed stream of the standard layer is the input byte for
// byte: Split hashes both and fails if they differ.
//
// A source layer holding a regular file whose content starts with
// blocks.StubMagic is refused (ErrReservedContent), and so is one with an entry
// name that Hydrate would refuse (ErrUnsafePath). On error, what was written to
// std and blocked is garbage (write to temp files); members already pushed
// stay in the store, unreferenced.
func Split(ctx context.Context, tarStream io.Reader, std, blocked io.Writer, opts SplitOptions) (*SplitResult, error) {
	c, err := normCompression(opts.Compression)
	if err != nil {
		return nil, err
	}
	comp, err := newCompressor(c)
	if err != nil {
		return nil, err
	}
	defer comp.close()
	// Block members get their own compressor: a verbatim member may be open
	// while a block's member is compressed.
	bcomp, err := newCompressor(c)
	if err != nil {
		return nil, err
	}
	defer bcomp.close()

	inHash := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(tarStream, inHash), copyBufSize)
	sp := &splitter{
		ctx:     ctx,
		c:       c,
		opts:    opts,
		comp:    comp,
		bcomp:   bcomp,
		br:      br,
		std:     newDigestWriter(std),
		blk:     newDigestWriter(blocked),
		emitted: sha256.New(),
		buf:     make([]byte, copyBufSize),
		known:   map[digest.Digest]ocispec.Descriptor{},
	}
	sp.both = io.MultiWriter(sp.std, sp.blk)
	defer sp.cleanup()

	if err := sp.run(); err != nil {
		return nil, err
	}

	diffID := digest.NewDigest(digest.SHA256, inHash)
	if got := digest.NewDigest(digest.SHA256, sp.emitted); got != diffID || sp.emittedN != sp.inN {
		return nil, fmt.Errorf("split: standard layer would decompress to %s (%d bytes), input is %s (%d bytes): %w",
			got, sp.emittedN, diffID, sp.inN, ErrMismatch)
	}
	res := &SplitResult{
		DiffID:   diffID,
		Standard: ocispec.Descriptor{MediaType: LayerMediaType(c), Digest: sp.std.digest(), Size: sp.std.n},
		Blocks:   sp.blocks,
	}
	res.Blocked = res.Standard
	if len(sp.blocks) > 0 {
		res.Blocked = ocispec.Descriptor{MediaType: LayerMediaType(c), Digest: sp.blk.digest(), Size: sp.blk.n}
	}
	return res, nil
}

type splitter struct {
	ctx   context.Context
	c     blocks.Compression
	opts  SplitOptions
	comp  *compressor // verbatim and stub members
	bcomp *compressor // block members
	br    *bufio.Reader

	std, blk *digestWriter
	both     io.Writer

	emitted  hash.Hash // uncompressed bytes put into the standard layer
	emittedN int64
	inN      int64 // bytes of the input tar (counted as entries are walked)

	vw  io.WriteCloser // open verbatim member, or nil
	vn  int64          // its uncompressed size so far
	any bool           // a member has been written

	buf    []byte
	paths  PathChecker
	blocks []Block
	known  map[digest.Digest]ocispec.Descriptor // members written or found in this split

	spool, memberTmp *os.File
	dec              *zstd.Decoder
	gzr              *gzip.Reader
}

func (sp *splitter) cleanup() {
	for _, f := range []*os.File{sp.spool, sp.memberTmp} {
		if f != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}
	if sp.dec != nil {
		sp.dec.Close()
	}
}

// verbatim appends raw tar bytes to the open verbatim member (both layers).
func (sp *splitter) verbatim(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if sp.vw == nil {
		sp.vw = sp.comp.begin(sp.both)
		sp.any = true
	}
	if _, err := sp.vw.Write(p); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	sp.vn += int64(len(p))
	sp.emit(p)
	return nil
}

func (sp *splitter) emit(p []byte) {
	sp.emitted.Write(p)
	sp.emittedN += int64(len(p))
}

// Write makes the splitter the io.Writer of verbatim bytes.
func (sp *splitter) Write(p []byte) (int, error) {
	if err := sp.verbatim(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (sp *splitter) closeVerbatim() error {
	if sp.vw == nil {
		return nil
	}
	err := sp.vw.Close()
	sp.vw, sp.vn = nil, 0
	if err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	return nil
}

// boundary is called at an entry boundary: a verbatim member past the cap ends.
func (sp *splitter) boundary() error {
	if sp.vn >= verbatimCap {
		return sp.closeVerbatim()
	}
	return nil
}

func (sp *splitter) run() error {
	// The tar reader reads exactly what it needs (no read-ahead), so the bytes
	// it consumes in Next are captured below it rather than taken from
	// tar-split's RawBytes, which misses the sparse map that a PAX 1.0 sparse
	// entry keeps in its data section.
	capture := &captureReader{r: sp.br}
	tr := tar.NewReader(capture)

	// What Next consumes is, in order: whatever of the previous entry was not
	// read (only for sparse entries, which are never read), the previous
	// entry's padding, and this entry's header record(s) (and sparse map).
	// prevPad and prevExact say how to cut it at the entry boundary.
	var (
		prevPad   int64
		prevExact = true
		prevBlock bool // the previous entry's padding is already in its block member
	)
	for {
		if err := sp.ctx.Err(); err != nil {
			return err
		}
		capture.start()
		hdr, err := tr.Next()
		raw := capture.stop()
		sp.inN += int64(len(raw))
		if errors.Is(err, io.EOF) {
			return sp.finish(raw, prevPad, prevBlock)
		}
		if err != nil {
			return fmt.Errorf("read tar at offset %d: %w", sp.inN, err)
		}
		var tail, hrec []byte
		if prevExact && int64(len(raw)) >= prevPad {
			tail, hrec = raw[:prevPad], raw[prevPad:]
		} else {
			tail = raw
		}
		if !prevBlock {
			if err := sp.verbatim(tail); err != nil {
				return err
			}
		}
		if err := sp.paths.Check(hdr.Name, hdr.Linkname, hdr.Typeflag); err != nil {
			return fmt.Errorf("layer entry at offset %d: %w", sp.inN-int64(len(hrec)), err)
		}
		sparse := isSparse(hdr.Typeflag, hdr.PAXRecords)
		pad := tr.ExpectedPadding()

		prevBlock = false
		if hrec != nil && !sparse && sp.isBlock(hdr) {
			prevBlock, err = sp.block(tr, hdr, hrec, pad)
			if err != nil {
				return err
			}
		} else {
			if hrec != nil {
				if err := sp.boundary(); err != nil {
					return err
				}
				if err := sp.verbatim(hrec); err != nil {
					return err
				}
			}
			if !sparse {
				// Sparse entries are left to the tar reader: it skips
				// their physical bytes in the next Next, captured above.
				if err := sp.copyData(tr, hdr, sp); err != nil {
					return err
				}
			}
		}
		prevPad, prevExact = pad, !sparse
	}
}

func (sp *splitter) isBlock(hdr *tar.Header) bool {
	if hdr.Typeflag != tar.TypeReg || hdr.Size <= 0 || strings.HasSuffix(hdr.Name, "/") {
		return false
	}
	if sp.opts.MinBlockSize > 0 && hdr.Size >= sp.opts.MinBlockSize {
		return true
	}
	if sp.opts.IsImported != nil {
		name := strings.TrimPrefix(strings.TrimPrefix(hdr.Name, "./"), "/")
		return sp.opts.IsImported(name)
	}
	return false
}

// copyData copies the entry's data to w and refuses reserved content.
func (sp *splitter) copyData(tr *tar.Reader, hdr *tar.Header, w io.Writer) error {
	pw := &prefixWriter{w: w}
	n, err := io.CopyBuffer(pw, tr, sp.buf)
	sp.inN += n
	if err != nil {
		return fmt.Errorf("layer entry %q: read data: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeReg && pw.isMagic() {
		return fmt.Errorf("layer entry %q: %w; such files are reserved for .import. stubs", hdr.Name, ErrReservedContent)
	}
	return nil
}

// finish writes what follows the last entry: its padding, the end-of-archive
// blocks and any trailing bytes, kept byte for byte.
func (sp *splitter) finish(raw []byte, prevPad int64, prevBlock bool) error {
	if prevBlock {
		if int64(len(raw)) < prevPad {
			return fmt.Errorf("split: tar ended inside padding already checked: %w", ErrMismatch)
		}
		raw = raw[prevPad:]
	}
	if err := sp.verbatim(raw); err != nil {
		return err
	}
	n, err := io.CopyBuffer(sp, sp.br, sp.buf)
	sp.inN += n
	if err != nil {
		return fmt.Errorf("read tar trailer: %w", err)
	}
	if err := sp.closeVerbatim(); err != nil {
		return err
	}
	if !sp.any {
		// An empty input still makes a valid (empty) compressed stream.
		if err := sp.comp.begin(sp.both).Close(); err != nil {
			return fmt.Errorf("write layer: %w", err)
		}
	}
	return nil
}

// block handles a block candidate whose header records are hrec. It returns
// false when the entry turned out not to be a block (non-zero padding, a header
// Go's archive/tar reads differently, a name no stub can carry); the entry is
// then written verbatim.
func (sp *splitter) block(tr *tar.Reader, hdr *tar.Header, hrec []byte, pad int64) (bool, error) {
	// Spool the data while hashing it: the block digest must be known before
	// the member can be looked up, and a block is never held in memory.
	if err := sp.openTemp(&sp.spool, "spool"); err != nil {
		return false, err
	}
	h := sha256.New()
	if err := sp.copyData(tr, hdr, io.MultiWriter(sp.spool, h)); err != nil {
		return false, err
	}
	raw := blocks.Ref{Digest: digest.NewDigest(digest.SHA256, h), Size: hdr.Size}

	ok, err := sp.eligible(hdr, hrec, pad)
	if err != nil {
		return false, err
	}
	var member ocispec.Descriptor
	var reuse bool
	var entry []byte
	if ok {
		member, reuse, err = sp.member(raw, pad)
		if err != nil {
			return false, fmt.Errorf("layer entry %q: block %s: %w", hdr.Name, raw.Digest, err)
		}
		entry, err = stubEntry(hdr.Name, blocks.Stub{Block: raw, Member: blocks.Ref{Digest: member.Digest, Size: member.Size}, Header: hrec})
		ok = err == nil
	}
	if !ok {
		if err := sp.boundary(); err != nil {
			return false, err
		}
		if err := sp.verbatim(hrec); err != nil {
			return false, err
		}
		if _, err := sp.spool.Seek(0, io.SeekStart); err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
		if _, err := io.CopyBuffer(sp, io.LimitReader(sp.spool, hdr.Size), sp.buf); err != nil {
			return false, fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
		return false, nil
	}

	if err := sp.closeVerbatim(); err != nil {
		return false, err
	}
	// Standard layer: m_hdr, then m_data.
	if err := WriteHeaderMember(sp.std, sp.c, hrec); err != nil {
		return false, fmt.Errorf("write layer: %w", err)
	}
	sp.emit(hrec)
	if reuse {
		err = sp.copyReused(member, raw, pad)
	} else {
		err = sp.copyNew(member, raw, pad)
	}
	if err != nil {
		return false, fmt.Errorf("layer entry %q: block %s: %w", hdr.Name, raw.Digest, err)
	}
	// Blocked layer: the stub member.
	sw := sp.comp.begin(sp.blk)
	if _, err := sw.Write(entry); err != nil {
		return false, fmt.Errorf("write blocked layer: %w", err)
	}
	if err := sw.Close(); err != nil {
		return false, fmt.Errorf("write blocked layer: %w", err)
	}
	sp.any = true
	sp.blocks = append(sp.blocks, Block{Path: hdr.Name, Raw: raw, Member: member})
	return true, nil
}

// eligible checks what can only be known once the data is read: the padding
// is all zero (the member holds zeros), and Go's archive/tar, which Hydrate
// uses, reads the header records as exactly this regular file.
func (sp *splitter) eligible(hdr *tar.Header, hrec []byte, pad int64) (bool, error) {
	p, err := sp.br.Peek(int(pad))
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("layer entry %q: read padding: %w", hdr.Name, err)
	}
	if int64(len(p)) != pad || !allZero(p) || len(hrec) > MaxStubHeader {
		return false, nil
	}
	h, err := ParseStubHeader(hrec, hdr.Size)
	if err != nil || h.Name != hdr.Name {
		return false, nil
	}
	return true, nil
}

// member finds the stored member of raw or compresses a new one into the store.
func (sp *splitter) member(raw blocks.Ref, pad int64) (ocispec.Descriptor, bool, error) {
	mt := sp.c.MemberMediaType()
	desc := func(d digest.Digest, n int64) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: d, Size: n,
			Annotations: map[string]string{blocks.AnnotationBlockDigest: raw.Digest.String()}}
	}
	if sp.opts.Members == nil {
		return ocispec.Descriptor{}, false, errors.New("no member store given to Split")
	}
	if d, ok := sp.known[raw.Digest]; ok {
		return d, true, nil
	}
	old, found, err := sp.opts.Members.LookupMember(sp.ctx, raw.Digest, sp.c)
	if err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("look up member: %w", err)
	}
	if found {
		ok, err := sp.opts.Members.Exists(sp.ctx, old.Digest)
		if err != nil {
			return ocispec.Descriptor{}, false, fmt.Errorf("member %s: %w", old.Digest, err)
		}
		if ok {
			d := desc(old.Digest, old.Size)
			sp.known[raw.Digest] = d
			return d, true, nil
		}
	}

	// Compress spool + padding into a temp file, then push it.
	if err := sp.openTemp(&sp.memberTmp, "member"); err != nil {
		return ocispec.Descriptor{}, false, err
	}
	if _, err := sp.spool.Seek(0, io.SeekStart); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("spool: %w", err)
	}
	mw := newDigestWriter(sp.memberTmp)
	zw := sp.bcomp.begin(mw)
	if _, err := io.CopyBuffer(zw, io.LimitReader(sp.spool, raw.Size), sp.buf); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("compress: %w", err)
	}
	if _, err := zw.Write(make([]byte, pad)); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("compress: %w", err)
	}
	if err := zw.Close(); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("compress: %w", err)
	}
	d := desc(mw.digest(), mw.n)
	if _, err := sp.memberTmp.Seek(0, io.SeekStart); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("member temp file: %w", err)
	}
	if err := sp.opts.Members.Push(sp.ctx, d, io.LimitReader(sp.memberTmp, d.Size)); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("push member %s: %w", d.Digest, err)
	}
	if err := sp.opts.Members.RecordMember(sp.ctx, raw.Digest, sp.c, d); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("record member %s: %w", d.Digest, err)
	}
	sp.known[raw.Digest] = d
	return d, false, nil
}

// copyNew copies the member just compressed into the standard layer. The
// bytes it holds are the spool's, which went through the compressor.
func (sp *splitter) copyNew(member ocispec.Descriptor, raw blocks.Ref, pad int64) error {
	if _, err := sp.memberTmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("member temp file: %w", err)
	}
	if n, err := io.CopyBuffer(sp.std, io.LimitReader(sp.memberTmp, member.Size), sp.buf); err != nil || n != member.Size {
		return fmt.Errorf("copy member %s (%d of %d bytes): %v", member.Digest, n, member.Size, err)
	}
	if _, err := sp.spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if _, err := io.CopyBuffer(writerFunc(func(p []byte) (int, error) { sp.emit(p); return len(p), nil }),
		io.LimitReader(sp.spool, raw.Size), sp.buf); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	sp.emit(make([]byte, pad))
	return nil
}

// copyReused copies a stored member into the standard layer, decompressing it
// on the way: what it holds must be the block's bytes and zero padding, or the
// standard layer would not be the input.
func (sp *splitter) copyReused(member ocispec.Descriptor, raw blocks.Ref, pad int64) error {
	rc, err := sp.opts.Members.Fetch(sp.ctx, member)
	if err != nil {
		return fmt.Errorf("fetch member %s: %w", member.Digest, err)
	}
	defer rc.Close()
	cw := &countWriter{w: sp.std}
	tee := io.TeeReader(io.LimitReader(rc, member.Size+1), cw)
	var dec io.Reader
	if sp.c == blocks.Zstd {
		if sp.dec == nil {
			sp.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
			if err != nil {
				return err
			}
		}
		if err := sp.dec.Reset(tee); err != nil {
			return fmt.Errorf("member %s: %w", member.Digest, err)
		}
		dec = sp.dec
	} else {
		if sp.gzr == nil {
			sp.gzr = new(gzip.Reader)
		}
		if err := sp.gzr.Reset(tee); err != nil {
			return fmt.Errorf("member %s: %w", member.Digest, err)
		}
		dec = sp.gzr
	}
	h := sha256.New()
	var tailBuf bytes.Buffer
	n, err := io.CopyBuffer(io.MultiWriter(h, writerFunc(func(p []byte) (int, error) { sp.emit(p); return len(p), nil })),
		io.LimitReader(dec, raw.Size), sp.buf)
	if err != nil || n != raw.Size {
		return fmt.Errorf("member %s: decompress (%d of %d bytes): %v: %w", member.Digest, n, raw.Size, err, ErrMismatch)
	}
	if _, err := io.Copy(&tailBuf, io.LimitReader(dec, pad+1)); err != nil {
		return fmt.Errorf("member %s: decompress: %v: %w", member.Digest, err, ErrMismatch)
	}
	if int64(tailBuf.Len()) != pad || !allZero(tailBuf.Bytes()) || digest.NewDigest(digest.SHA256, h) != raw.Digest {
		return fmt.Errorf("member %s does not hold block %s and its padding: %w", member.Digest, raw.Digest, ErrMismatch)
	}
	sp.emit(tailBuf.Bytes())
	if _, err := io.CopyBuffer(io.Discard, tee, sp.buf); err != nil {
		return fmt.Errorf("member %s: %w", member.Digest, err)
	}
	if cw.n != member.Size {
		return fmt.Errorf("member %s: read %d bytes, want %d: %w", member.Digest, cw.n, member.Size, ErrMismatch)
	}
	return nil
}

func (sp *splitter) openTemp(f **os.File, what string) error {
	if *f != nil {
		if _, err := (*f).Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("%s temp file: %w", what, err)
		}
		if err := (*f).Truncate(0); err != nil {
			return fmt.Errorf("%s temp file: %w", what, err)
		}
		return nil
	}
	t, err := os.CreateTemp(sp.opts.TempDir, "blockfile-"+what+"-*")
	if err != nil {
		return fmt.Errorf("%s temp file: %w", what, err)
	}
	*f = t
	return nil
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// captureReader keeps what is read between start and stop.
type captureReader struct {
	r   io.Reader
	on  bool
	buf []byte
}

func (c *captureReader) start() { c.on, c.buf = true, c.buf[:0] }

func (c *captureReader) stop() []byte { c.on = false; return c.buf }

func (c *captureReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.on {
		c.buf = append(c.buf, p[:n]...)
	}
	return n, err
}

// prefixWriter passes writes through and keeps the first bytes, to check the
// stub magic.
type prefixWriter struct {
	w      io.Writer
	prefix []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if k := len(blocks.StubMagic) - len(p.prefix); k > 0 {
		p.prefix = append(p.prefix, b[:min(k, len(b))]...)
	}
	return p.w.Write(b)
}

func (p *prefixWriter) isMagic() bool { return string(p.prefix) == blocks.StubMagic }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// digestWriter writes through to w and hashes and counts what was written.
type digestWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func newDigestWriter(w io.Writer) *digestWriter { return &digestWriter{w: w, h: sha256.New()} }

func (d *digestWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.h.Write(p[:n])
	d.n += int64(n)
	return n, err
}

func (d *digestWriter) digest() digest.Digest { return digest.NewDigest(digest.SHA256, d.h) }
