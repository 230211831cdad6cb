package layer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// StubEntry is one stub found in a blocked layer.
type StubEntry struct {
	// Path is the block file's name in the standard layer (from Stub.Header).
	Path string
	// StubPath is the stub entry's name in the blocked layer.
	StubPath string
	// Offset is where the stub member holding this stub starts in the
	// compressed blocked layer. Consecutive stubs share one stub member, so
	// several entries may have the same Offset; they are listed in order.
	Offset int64
	// Stub is the parsed stub document.
	Stub blocks.Stub
}

// MemberOpener is an optional interface of a MemberFetcher (*store.Store
// has it): OpenUnverified opens a member checking its size but without
// hashing it. Hydrate then reads members that way, because the whole output
// is checked against the wanted layer digest, which covers every member byte
// it holds: each byte is hashed once instead of twice. Only if that check (or
// anything else) fails does Hydrate read the members it used again with
// Fetch, so that the error names a corrupt member as a verifying read would.
type MemberOpener interface {
	OpenUnverified(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// Hydrate reads a blocked layer and writes the standard layer to w: verbatim
// members are copied as they are, each stub member is replaced by the header
// member rebuilt from the stub and the block member fetched from fetch. It
// trusts nothing it reads: the framing is parsed member by member, every
// entry name is checked (absolute, "..", through a symlink of the layer),
// stubs are validated, a stub naming a member that is not in members fails
// (ErrNotListed), fetched members are verified by size and, through fetch or
// (with a MemberOpener) through the output digest, by digest, and the output
// is checked against want at the end (ErrMismatch). On error, what was
// written to w is garbage: write to a temp file and rename on success.
func Hydrate(ctx context.Context, blocked io.Reader, w io.Writer, members []ocispec.Descriptor, fetch MemberFetcher, want ocispec.Descriptor) error {
	if err := want.Digest.Validate(); err != nil {
		return fmt.Errorf("hydrate: wanted layer digest %q: %w", want.Digest, err)
	}
	listed := make(map[digest.Digest]ocispec.Descriptor, len(members))
	for _, m := range members {
		listed[m.Digest] = m
	}
	var open openFunc
	if fetch != nil {
		open = fetch.Fetch
	}
	// Members read without their own hash, in first-use order, to re-check
	// with Fetch if the hydrate fails.
	var unchecked []usedMember
	var seen map[digest.Digest]bool
	opener, _ := fetch.(MemberOpener)
	if opener != nil {
		open = opener.OpenUnverified
		seen = make(map[digest.Digest]bool)
	}
	out := newOutWriter(w, want.Size)
	defer out.finish()
	err := walk(ctx, blocked, want.MediaType, out, func(c blocks.Compression, e StubEntry) error {
		m, ok := listed[e.Stub.Member.Digest]
		if !ok || m.Size != e.Stub.Member.Size {
			return fmt.Errorf("stub %s: block %s is %w (member %s, %d bytes)",
				e.StubPath, e.Stub.Block.Digest, ErrNotListed, e.Stub.Member.Digest, e.Stub.Member.Size)
		}
		if a, ok := m.Annotations[blocks.AnnotationBlockDigest]; ok && a != e.Stub.Block.Digest.String() {
			return fmt.Errorf("stub %s: member %s holds block %s per the block set, the stub says %s: %w",
				e.StubPath, m.Digest, a, e.Stub.Block.Digest, ErrMismatch)
		}
		if err := WriteHeaderMember(out, c, e.Stub.Header); err != nil {
			return err
		}
		if seen != nil && !seen[m.Digest] {
			seen[m.Digest] = true
			unchecked = append(unchecked, usedMember{m, e.StubPath})
		}
		// out reads the member into its chunks itself (ReadFrom): no buffer.
		return copyMember(ctx, out, open, m, e.StubPath, nil)
	})
	if err == nil {
		var got digest.Digest
		if got, err = out.finish(); err == nil && (out.n != want.Size || got != want.Digest) {
			err = fmt.Errorf("produced %s (%d bytes), want %d bytes: %w", got, out.n, want.Size, ErrMismatch)
		}
	}
	if err != nil && len(unchecked) > 0 && ctx.Err() == nil {
		// A member read unhashed may be why: name it, as a verifying read
		// would have when it reached that member.
		if merr := recheckMembers(ctx, fetch, unchecked); merr != nil {
			err = merr
		}
	}
	if err != nil {
		return fmt.Errorf("hydrate layer %s: %w", want.Digest, err)
	}
	return nil
}

type openFunc func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)

// usedMember is a member copied into the output, and the first stub that
// named it.
type usedMember struct {
	desc     ocispec.Descriptor
	stubPath string
}

// recheckMembers reads the members again with the verifying fetch, in the
// order they were used, and returns the error of the first bad one.
func recheckMembers(ctx context.Context, fetch MemberFetcher, used []usedMember) error {
	buf := make([]byte, copyBufSize)
	for _, u := range used {
		// Plain reads into buf: io.Discard's ReadFrom would use 8 KiB ones.
		if ctx.Err() != nil {
			return nil
		}
		if err := copyMember(ctx, struct{ io.Writer }{io.Discard}, fetch.Fetch, u.desc, u.stubPath, buf); err != nil {
			return err
		}
	}
	return nil
}

// copyMember copies a block member to out. Its bytes are verified without
// hashing them here: open either verifies digest and size (the MemberFetcher
// contract; the store's Fetch does) or checks the size (a MemberOpener), and
// the whole output is checked against the wanted layer digest, which no
// wrong byte survives. The size is checked here too so that an error names
// the member.
func copyMember(ctx context.Context, out io.Writer, open openFunc, m ocispec.Descriptor, stubPath string, buf []byte) error {
	if open == nil {
		return fmt.Errorf("stub %s: member %s: no fetcher", stubPath, m.Digest)
	}
	rc, err := open(ctx, m)
	if err != nil {
		return fmt.Errorf("stub %s: fetch member %s: %w", stubPath, m.Digest, err)
	}
	defer rc.Close()
	n, err := io.CopyBuffer(out, io.LimitReader(rc, m.Size+1), buf)
	if err != nil {
		return fmt.Errorf("stub %s: member %s: %w", stubPath, m.Digest, err)
	}
	if n != m.Size {
		return fmt.Errorf("stub %s: member %s: got %d bytes, want %d: %w", stubPath, m.Digest, n, m.Size, ErrMismatch)
	}
	return nil
}

// ReadStubs lists the stubs of a blocked layer, checking it the way Hydrate
// does (framing, entry names, stub documents) without fetching any member.
func ReadStubs(ctx context.Context, blocked io.Reader) ([]StubEntry, error) {
	var stubs []StubEntry
	err := walk(ctx, blocked, "", io.Discard, func(_ blocks.Compression, e StubEntry) error {
		stubs = append(stubs, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return stubs, nil
}

// outWriter counts what Hydrate writes, refuses more than max bytes so a bad
// layer fails as soon as it overflows, and hands the bytes to a pipeline of
// two goroutines: one writes them to w, the next hashes them. Hydrating a
// layer of small files is mostly the walk (decompressing and parsing the
// blocked layer), so the walk only copies bytes into chunks and the output
// write and the hash run beside it, and beside each other. An error of w is
// returned by a later Write, and by finish.
type outWriter struct {
	w     io.Writer
	n     int64
	max   int64
	h     hash.Hash
	write chan []byte // chunks to write to w, in order
	hash  chan []byte // chunks written, to hash, in order
	free  chan []byte
	done  chan struct{}
	werr  atomic.Pointer[error] // first error of w
	sum   digest.Digest
}

const (
	outChunk  = 256 << 10
	outChunks = 8 // bounds memory: at most 2 MiB in flight
)

func newOutWriter(w io.Writer, max int64) *outWriter {
	o := &outWriter{w: w, max: max, h: sha256.New(),
		write: make(chan []byte, outChunks), hash: make(chan []byte, outChunks),
		free: make(chan []byte, outChunks), done: make(chan struct{})}
	for range outChunks {
		o.free <- make([]byte, outChunk)
	}
	go func() {
		defer close(o.hash)
		for b := range o.write {
			if o.werr.Load() == nil {
				if _, err := o.w.Write(b); err != nil {
					e := err
					o.werr.Store(&e)
				}
			}
			o.hash <- b
		}
	}()
	go func() {
		defer close(o.done)
		for b := range o.hash {
			o.h.Write(b)
			o.free <- b[:cap(b)]
		}
	}()
	return o
}

func (o *outWriter) Write(p []byte) (int, error) {
	if err := o.werr.Load(); err != nil {
		return 0, *err
	}
	if o.n+int64(len(p)) > o.max {
		return 0, fmt.Errorf("output exceeds the wanted %d bytes: %w", o.max, ErrMismatch)
	}
	o.n += int64(len(p))
	for q := p; len(q) > 0; {
		b := <-o.free
		k := copy(b, q)
		o.write <- b[:k]
		q = q[k:]
	}
	return len(p), nil
}

// ReadFrom reads r into the pipeline's chunks directly (io.Copy uses it), so
// that member bytes are not copied once more through a copy buffer.
func (o *outWriter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if err := o.werr.Load(); err != nil {
			return total, *err
		}
		b := <-o.free
		n, err := io.ReadFull(r, b)
		if n > 0 {
			if o.n+int64(n) > o.max {
				o.free <- b
				return total, fmt.Errorf("output exceeds the wanted %d bytes: %w", o.max, ErrMismatch)
			}
			o.n += int64(n)
			total += int64(n)
			o.write <- b[:n]
		} else {
			o.free <- b
		}
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return total, nil
		case err != nil:
			return total, err
		}
	}
}

// finish waits for the pipeline and returns the digest of what was written,
// or the first error of w. Later calls return the same.
func (o *outWriter) finish() (digest.Digest, error) {
	if o.sum == "" {
		close(o.write)
		<-o.done
		o.sum = digest.NewDigest(digest.SHA256, o.h)
	}
	if err := o.werr.Load(); err != nil {
		return "", fmt.Errorf("write layer: %w", *err)
	}
	return o.sum, nil
}

// sniff returns the compression of a layer from its first bytes.
func sniff(head []byte) (blocks.Compression, bool) {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return blocks.Gzip, true
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return blocks.Zstd, true
	}
	return "", false
}

// walker walks a blocked layer member by member.
type walker struct {
	ctx    context.Context
	c      blocks.Compression
	src    *source     // zstd
	gsrc   *gzipSource // gzip
	gz     *gzip.Reader
	zd     *zstd.Decoder
	fr     zstdFrame
	paths  PathChecker
	buf    []byte
	onStub func(blocks.Compression, StubEntry) error
}

// walk parses the blocked layer r; verbatim members are copied to out, stub
// members are passed to onStub, in layer order.
func walk(ctx context.Context, r io.Reader, mediaType string, out io.Writer, onStub func(blocks.Compression, StubEntry) error) error {
	br := bufio.NewReaderSize(r, copyBufSize)
	head, err := br.Peek(4)
	if len(head) == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return fmt.Errorf("empty layer: %w", ErrMalformed)
		}
		return fmt.Errorf("read layer: %w", err)
	}
	c, ok := sniff(head)
	if !ok {
		return fmt.Errorf("layer starts with %x, neither gzip nor zstd: %w", head, ErrMalformed)
	}
	if (strings.Contains(mediaType, "zstd") && c != blocks.Zstd) || (strings.Contains(mediaType, "gzip") && c != blocks.Gzip) {
		return fmt.Errorf("layer of media type %s holds %s: %w", mediaType, c, ErrMalformed)
	}
	wk := &walker{ctx: ctx, c: c, buf: make([]byte, 64<<10), onStub: onStub}
	next := br // where the next member starts
	if c == blocks.Zstd {
		wk.src = &source{br: br, out: out}
		wk.zd, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
		if err != nil {
			return err
		}
		defer wk.zd.Close()
	} else {
		wk.gz = new(gzip.Reader)
		wk.gsrc = newGzipSource(br, out)
		next = wk.gsrc.br
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := next.Peek(1); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read layer at offset %d: %w", wk.offset(), err)
		}
		if err := wk.member(); err != nil {
			return err
		}
	}
}

func (wk *walker) malformed(start int64, format string, a ...any) error {
	return fmt.Errorf("member at offset %d: %s: %w", start, fmt.Sprintf(format, a...), ErrMalformed)
}

// member walks one member: decompresses it, parses its tar entries, and
// either copies it out (verbatim) or hands its stubs on, in order.
func (wk *walker) member() error {
	start := wk.offset()
	wk.begin()
	var dec io.Reader
	if wk.c == blocks.Zstd {
		wk.fr.reset(wk.src)
		if err := wk.zd.Reset(&wk.fr); err != nil {
			return wk.malformed(start, "zstd: %v", err)
		}
		dec = wk.zd
	} else {
		if err := wk.gz.Reset(wk.gsrc.br); err != nil {
			return wk.malformed(start, "gzip header: %v", err)
		}
		wk.gz.Multistream(false)
		dec = syncReader{r: wk.gz, g: wk.gsrc}
	}
	cr := &countReader{r: dec}
	tr := tar.NewReader(cr)
	first := true
	stubs := 0        // stub entries seen; > 0 makes this a stub member
	var stubEnd int64 // member offset after the last stub entry's padding
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return wk.malformed(start, "tar entry at member offset %d: %v", cr.n, err)
		}
		if cr.nonZero {
			return wk.malformed(start, "stub %d: non-zero padding", stubs)
		}
		var prefix []byte
		if h.Typeflag == tar.TypeReg && !isSparse(h.Typeflag, h.PAXRecords) && h.Size >= int64(len(blocks.StubMagic)) {
			prefix = make([]byte, len(blocks.StubMagic))
			if _, err := io.ReadFull(tr, prefix); err != nil {
				return wk.malformed(start, "entry %q cut short: %v", h.Name, err)
			}
		}
		isStub := string(prefix) == blocks.StubMagic
		switch {
		case isStub && (first || stubs > 0):
			if first {
				// A stub member: its bytes are replaced, never output.
				wk.toDiscard()
				first = false
			}
			stubs++
			if stubEnd, err = wk.stub(start, stubs, h, prefix, tr, cr); err != nil {
				return err
			}
			continue
		case isStub:
			return wk.malformed(start, "entry %q holds stub content but its member holds other entries", h.Name)
		case stubs > 0:
			return wk.malformed(start, "entry %q follows %d stub(s) in a stub member but is not a stub", h.Name, stubs)
		}
		if first {
			// Not a stub member: copy it out as it is decompressed.
			if err := wk.toDirect(); err != nil {
				return fmt.Errorf("write layer: %w", err)
			}
			first = false
		}
		if err := wk.paths.Check(h.Name, h.Linkname, h.Typeflag); err != nil {
			return fmt.Errorf("member at offset %d: %w", start, err)
		}
	}
	if stubs > 0 {
		// A stub member holds its stub entries and nothing else: no
		// end-of-archive blocks, no trailing bytes.
		if cr.nonZero {
			return wk.malformed(start, "stub %d: non-zero padding", stubs)
		}
		if cr.n != stubEnd {
			return wk.malformed(start, "%d bytes after the last of %d stubs", cr.n-stubEnd, stubs)
		}
		if n, err := io.CopyBuffer(io.Discard, cr, wk.buf); err != nil || n != 0 {
			return wk.malformed(start, "%d bytes after the last of %d stubs (%v)", n, stubs, err)
		}
		if err := wk.endMember(start); err != nil {
			return err
		}
		wk.endStubMember()
		return nil
	}
	// The end of the member's entries: the member ends here, or (last
	// member) end-of-archive blocks and trailing bytes follow.
	if err := wk.toDirect(); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	if _, err := io.CopyBuffer(io.Discard, cr, wk.buf); err != nil {
		if werr := wk.writeErr(); werr != nil {
			return fmt.Errorf("write layer: %w", werr)
		}
		return wk.malformed(start, "%v", err)
	}
	if err := wk.endMember(start); err != nil {
		return err
	}
	if err := wk.flushMember(); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	return nil
}

// The walker's view of its source, gzip or zstd: where it is, and what
// becomes of the compressed bytes of the member being read.

// offset is how many bytes of the layer the decompressor has consumed.
func (wk *walker) offset() int64 {
	if wk.gsrc != nil {
		return wk.gsrc.offset()
	}
	return wk.src.off
}

// begin starts a member: its bytes are held until its first entry says
// whether it is verbatim or a stub member.
func (wk *walker) begin() {
	if wk.gsrc != nil {
		wk.gsrc.mode = holdBytes
		return
	}
	wk.src.buf, wk.src.direct, wk.src.discard = wk.src.buf[:0], false, false
}

// toDiscard makes the member a stub member: its bytes are dropped.
func (wk *walker) toDiscard() {
	if wk.gsrc != nil {
		wk.gsrc.mode = dropBytes
		wk.gsrc.sync(true)
		return
	}
	wk.src.buf, wk.src.discard = wk.src.buf[:0], true
}

// toDirect makes the member verbatim: its bytes are written out as they
// are consumed, starting with those held.
func (wk *walker) toDirect() error {
	if wk.gsrc != nil {
		wk.gsrc.mode = writeBytes
		return wk.gsrc.sync(true)
	}
	wk.src.direct = true
	return wk.src.flush()
}

// flushMember writes out the rest of a verbatim member once it is consumed.
func (wk *walker) flushMember() error {
	if wk.gsrc != nil {
		return wk.gsrc.sync(true)
	}
	return wk.src.flush()
}

// endStubMember drops the rest of a stub member once it is consumed.
func (wk *walker) endStubMember() {
	if wk.gsrc != nil {
		wk.gsrc.sync(true)
		wk.gsrc.mode = holdBytes
		return
	}
	wk.src.buf, wk.src.discard = wk.src.buf[:0], false
}

// writeErr is the first error writing the output, if any.
func (wk *walker) writeErr() error {
	if wk.gsrc != nil {
		return wk.gsrc.err
	}
	return wk.src.err
}

// gzipSource feeds a gzip layer to the decompressor through a *bufio.Reader,
// for which klauspost/compress has a fast decoding path that, like any
// io.ByteReader, consumes exactly the bytes of one member (it Peeks and
// Discards what it decoded): decompressing the blocked layer is most of
// hydrating a layer of small files, and this path takes about two thirds
// of the time of a byte reader's. What the bufio.Reader reads from the layer
// is recorded, so that the compressed bytes of a verbatim member can be
// written out once the decompressor has consumed them; (zstd frames are
// parsed by zstdFrame from a source instead).
type gzipSource struct {
	br   *bufio.Reader // over rec; what the decompressor reads
	rec  recorder
	mode byteMode
	out  io.Writer
	err  error // sticky error of out
}

// byteMode says what becomes of the consumed bytes of the current member.
type byteMode int

const (
	holdBytes  byteMode = iota // until the first entry is read (at most maxPending)
	writeBytes                 // a verbatim member: written out
	dropBytes                  // a stub member: dropped
)

func newGzipSource(r io.Reader, out io.Writer) *gzipSource {
	g := &gzipSource{rec: recorder{r: r}, out: out}
	g.br = bufio.NewReaderSize(&g.rec, flushAt)
	return g
}

// offset is how many bytes of the layer the decompressor has consumed.
func (g *gzipSource) offset() int64 { return g.rec.n - int64(g.br.Buffered()) }

// sync hands on the bytes consumed since the last call, according to mode:
// written out or dropped once at least flushAt bytes are held (or at once
// with force), or held, up to maxPending bytes.
func (g *gzipSource) sync(force bool) error {
	held := g.rec.held(g.offset())
	switch g.mode {
	case dropBytes:
		if force || len(held) >= flushAt {
			g.rec.release(len(held))
		}
	case writeBytes:
		if force || len(held) >= flushAt {
			if g.err != nil {
				return g.err
			}
			if len(held) > 0 {
				if _, err := g.out.Write(held); err != nil {
					g.err = err
					return err
				}
			}
			g.rec.release(len(held))
		}
	default:
		if len(held) > maxPending {
			return fmt.Errorf("member at offset %d: first entry too large to classify: %w", g.offset(), ErrMalformed)
		}
	}
	return nil
}

// recorder keeps what is read through it: data[head:] holds the bytes at
// layer offsets base up to n. The bufio.Reader above it reads ahead at most
// its size, so what is kept stays bounded.
type recorder struct {
	r    io.Reader
	data []byte
	head int
	base int64 // layer offset of data[head]
	n    int64 // bytes read from r
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.data = append(c.data, p[:n]...)
	c.n += int64(n)
	return n, err
}

// held returns the bytes kept from base up to offset to (consumed, not yet
// released).
func (c *recorder) held(to int64) []byte {
	return c.data[c.head : c.head+int(to-c.base)]
}

// release drops the k oldest bytes kept.
func (c *recorder) release(k int) {
	c.head += k
	c.base += int64(k)
	switch {
	case c.head == len(c.data):
		c.data, c.head = c.data[:0], 0
	case c.head >= flushAt && 2*c.head >= len(c.data):
		n := copy(c.data, c.data[c.head:])
		c.data, c.head = c.data[:n], 0
	}
}

// syncReader reads decompressed bytes from r and then lets g hand on the
// compressed bytes consumed meanwhile.
type syncReader struct {
	r io.Reader
	g *gzipSource
}

func (s syncReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if serr := s.g.sync(false); serr != nil {
		return n, serr
	}
	return n, err
}

func (wk *walker) endMember(start int64) error {
	if wk.c == blocks.Zstd && !wk.fr.done() {
		return wk.malformed(start, "zstd frame not fully decoded")
	}
	return nil
}

// stub reads the k-th stub entry h of the stub member at start (its content
// starts with prefix), checks it and hands it on. It returns the member
// offset where the entry's padding ends, and arms cr to check that the
// padding, which the tar reader skips, is zero.
func (wk *walker) stub(start int64, k int, h *tar.Header, prefix []byte, tr *tar.Reader, cr *countReader) (int64, error) {
	if h.Size > int64(MaxStubSize) {
		return 0, wk.malformed(start, "stub %q of %d bytes exceeds %d", h.Name, h.Size, MaxStubSize)
	}
	doc := make([]byte, h.Size)
	copy(doc, prefix)
	if _, err := io.ReadFull(tr, doc[len(prefix):]); err != nil {
		return 0, wk.malformed(start, "stub %q cut short: %v", h.Name, err)
	}
	pad := (512 - h.Size%512) % 512
	cr.zeroFrom, cr.zeroTo = cr.n, cr.n+pad
	at := fmt.Sprintf("stub %s (entry %d of the stub member at offset %d)", h.Name, k, start)
	st, err := ParseStub(doc)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", at, err)
	}
	if !IsStubName(h.Name) {
		return 0, fmt.Errorf("%s: base name does not start with %q: %w", at, blocks.StubPrefix, ErrBadStub)
	}
	rh, err := ParseStubHeader(st.Header, st.Block.Size)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", at, err)
	}
	if sn, err := StubName(rh.Name); err != nil || sn != h.Name {
		return 0, fmt.Errorf("%s stands for %q, whose stub would be %q: %w", at, rh.Name, sn, ErrBadStub)
	}
	if err := wk.paths.Check(rh.Name, "", tar.TypeReg); err != nil {
		return 0, fmt.Errorf("%s: %w", at, err)
	}
	if err := wk.onStub(wk.c, StubEntry{Path: rh.Name, StubPath: h.Name, Offset: start, Stub: st}); err != nil {
		return 0, err
	}
	return cr.zeroTo, nil
}
