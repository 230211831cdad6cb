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
	buf := make([]byte, copyBufSize)
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
		return copyMember(ctx, out, open, m, e.StubPath, buf)
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
		if merr := recheckMembers(ctx, fetch, unchecked, buf); merr != nil {
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
func recheckMembers(ctx context.Context, fetch MemberFetcher, used []usedMember, buf []byte) error {
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
	src    *source
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
	wk := &walker{ctx: ctx, c: c, src: &source{br: br, out: out}, buf: make([]byte, 64<<10), onStub: onStub}
	if c == blocks.Zstd {
		wk.zd, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
		if err != nil {
			return err
		}
		defer wk.zd.Close()
	} else {
		wk.gz = new(gzip.Reader)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := br.Peek(1); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read layer at offset %d: %w", wk.src.off, err)
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
	src := wk.src
	start := src.off
	src.buf, src.direct, src.discard = src.buf[:0], false, false
	var dec io.Reader
	if wk.c == blocks.Zstd {
		wk.fr.reset(src)
		if err := wk.zd.Reset(&wk.fr); err != nil {
			return wk.malformed(start, "zstd: %v", err)
		}
		dec = wk.zd
	} else {
		if err := wk.gz.Reset(src); err != nil {
			return wk.malformed(start, "gzip header: %v", err)
		}
		wk.gz.Multistream(false)
		dec = wk.gz
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
				src.buf, src.discard = src.buf[:0], true
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
			src.direct = true
			if err := src.flush(); err != nil {
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
		src.buf, src.discard = src.buf[:0], false
		return nil
	}
	// The end of the member's entries: the member ends here, or (last
	// member) end-of-archive blocks and trailing bytes follow.
	src.direct = true
	if _, err := io.CopyBuffer(io.Discard, cr, wk.buf); err != nil {
		if src.err != nil {
			return fmt.Errorf("write layer: %w", src.err)
		}
		return wk.malformed(start, "%v", err)
	}
	if err := wk.endMember(start); err != nil {
		return err
	}
	if err := src.flush(); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	return nil
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
