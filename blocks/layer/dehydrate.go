package layer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks"
)

// Dehydrate is Hydrate run backwards: from a block-framed gzip standard
// layer (size bytes, read at offsets from std) it writes the blocked layer
// export wrote beside it, and returns the standard layer's parts (Layout's,
// for the blocked layer it wrote).
//
// Why: a first pull through a registry must bring every byte of a layer
// whose blocks the store lacks. Read as the blocked layer plus Range GETs
// of the block members, a layer of small files with blocks among them (an
// OS layer) costs one request per run of members (a hundred for the bench
// image's system layer), and a registry spends about as much on a request as
// on streaming megabytes (docs/BENCHMARKS.md); read whole, it is one request
// and fewer bytes (the verbatim members are not read twice), and its blocked
// layer follows from it: the verbatim members as they are, and for each run
// of consecutive (m_hdr, m_data) pairs the stub member export writes (same
// stub entries, same cuts, same pinned compression). The caller checks the
// result against the blocked layer's digest and reads the blocked layer
// from the registry if it differs (a layer some other writer made).
//
// Only what the blocked layer needs is inflated: every member starts with
// the fixed gzip header of section 2, so the places where that header
// occurs are candidate starts; at each, workers goroutines inflate the
// first header's worth (a few hundred bytes) to find the header members,
// and inflate the block member after each header member whole, to name
// its raw block in the stub. The bytes between one block member and the
// next header member are verbatim members, copied as they are, never
// inflated (a blocked layer of small files is mostly those). A candidate
// that is not a member start (the header's bytes inside stored data) is
// either not a header member or, were it one by chance, makes a blocked
// layer that the caller's digest check refuses. A header member is a
// member whose raw content is exactly the tar header records of one
// regular, non-sparse file of non-zero size, at most MaxStubHeader bytes;
// the member after it is the block member, which must hold that size and
// zero padding. The bytes may be arriving unverified (a pull), so the work
// is bounded: at most maxDehydrateMembers candidates, header records of
// MaxLayoutHeaders in all, a block member inflated no further than its
// header member gives, and 16 times the layer's size (256 MiB at least)
// inflated in all; beyond, ErrTooLarge. Memory holds, per header member,
// its header records and its block's digests. Zstd layers are refused
// (ErrMalformed).
//
// With opts.Known (a block map, docs/FORMAT.md section 8d: each block
// member's raw block, as the stubs export wrote name it) no block member
// is inflated: a block member ends where the next candidate starts, its
// compressed bytes are hashed, and the map names its raw block; a member
// the map lacks, or whose gzip trailer does not give the size its header
// member does, is inflated as without a map. The map is the publisher's
// word, as the stubs of a blocked layer read from a registry are: a wrong
// entry makes a stub, hence a blocked layer, that the caller's digest
// check refuses.
func Dehydrate(ctx context.Context, std io.ReaderAt, size int64, blocked io.Writer, opts DehydrateOptions) ([]Part, error) {
	workers := max(opts.Workers, 1)
	// One goroutine finds the candidates in order, workers inflate them:
	// with a reader that waits for bytes still arriving (store.Follower),
	// this runs while the layer downloads.
	g, gctx := errgroup.WithContext(ctx)
	work := make(chan *memberInfo, 256)
	budget := newInflateBudget(size)
	var infos []*memberInfo // the scanner's until g.Wait
	g.Go(func() error {
		defer close(work)
		return memberCandidates(gctx, std, size, func(off int64) error {
			if len(infos) >= maxDehydrateMembers {
				return fmt.Errorf("more than %d members: %w", maxDehydrateMembers, ErrTooLarge)
			}
			m := &memberInfo{start: off}
			infos = append(infos, m)
			select {
			case work <- m:
				return nil
			case <-gctx.Done():
				return gctx.Err()
			}
		})
	})
	for range workers {
		g.Go(func() error {
			in := &memberReader{budget: budget, probeOnly: opts.Known != nil}
			for m := range work {
				if err := gctx.Err(); err != nil {
					return err
				}
				if err := in.probe(std, m, size); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if len(infos) == 0 || infos[0].start != 0 {
		return nil, fmt.Errorf("standard layer does not start with a gzip member: %w", ErrMalformed)
	}
	if opts.Known != nil {
		if err := knownBlocks(ctx, std, size, infos, opts.Known, budget, workers); err != nil {
			return nil, err
		}
	}
	return assembleBlocked(ctx, std, size, infos, blocked)
}

// DehydrateOptions tune Dehydrate.
type DehydrateOptions struct {
	// Workers inflate (and hash) members at once; at least 1.
	Workers int
	// Known maps block member digests to the raw blocks they hold (a
	// block map); nil inflates every block member to name its raw block.
	Known map[digest.Digest]digest.Digest
}

// knownBlocks finds, after the probes, the block member after each header
// member through known: it ends at the next candidate start (every member
// starts with gzipMagic), and its compressed bytes' digest names its raw
// block there. Members known lacks, or whose trailer's ISIZE is not the
// size (with padding) the header member gives, are inflated. The members
// hashed lie between consecutive candidates, so in a layer whose header
// members do not overlap all of them together are at most the layer; header
// members made to overlap could make them more, so more than the layer's
// size hashed in all is ErrTooLarge.
func knownBlocks(ctx context.Context, std io.ReaderAt, size int64, infos []*memberInfo, known map[digest.Digest]digest.Digest, budget *inflateBudget, workers int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	var hashed atomic.Int64
	readers := make(chan *memberReader, workers)
	for range workers {
		readers <- &memberReader{budget: budget}
	}
	for i, m := range infos {
		if m.hdr == nil {
			continue
		}
		// infos are in order of start: the first candidate past m.end.
		end := size
		if k := sort.Search(len(infos)-i-1, func(k int) bool { return infos[i+1+k].start > m.end }); i+1+k < len(infos) {
			end = infos[i+1+k].start
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			in := <-readers
			defer func() { readers <- in }()
			if hashed.Add(end-m.end) > size {
				return fmt.Errorf("block members of more than the layer's %d bytes: %w", size, ErrTooLarge)
			}
			want := m.hdr.Size + (512-m.hdr.Size%512)%512
			if b, ok := in.knownBlock(std, m.end, end, want, known); ok {
				m.block = b
				return nil
			}
			m.block = in.inflateBlock(std, m.end, size, want)
			if errors.Is(m.block.err, ErrTooLarge) {
				return m.block.err
			}
			return nil
		})
	}
	return g.Wait()
}

// knownBlock hashes the member [start, end) and looks it up in known; it
// reports false (inflate instead) if known lacks it or its trailer's ISIZE
// is not want (mod 2^32).
func (m *memberReader) knownBlock(r io.ReaderAt, start, end, want int64, known map[digest.Digest]digest.Digest) (blockInfo, bool) {
	m.init()
	if end-start < 18 {
		return blockInfo{}, false
	}
	var trailer [4]byte
	if _, err := r.ReadAt(trailer[:], end-4); err != nil || binary.LittleEndian.Uint32(trailer[:]) != uint32(want) {
		return blockInfo{}, false
	}
	m.mh.Reset()
	if _, err := io.CopyBuffer(m.mh, io.NewSectionReader(r, start, end-start), m.buf); err != nil {
		return blockInfo{}, false
	}
	member := digest.NewDigest(digest.SHA256, m.mh)
	raw, ok := known[member]
	if !ok || raw.Validate() != nil {
		return blockInfo{}, false
	}
	return blockInfo{end: end, rawLen: want, member: member, raw: raw}, true
}

// maxDehydrateMembers bounds the members (and candidate starts) Dehydrate
// holds, about 1 KiB each: a layer of more is read as its blocked layer.
const maxDehydrateMembers = 1 << 17

// memberInfo is what a worker learnt at a candidate start: whether a
// header member starts there, and if so the block member after it.
type memberInfo struct {
	start int64
	hdr   *tar.Header // a header member: its header,
	hrec  []byte      // records,
	end   int64       // and end (where its block member starts)
	block blockInfo
}

// blockInfo is a block member, inflated whole.
type blockInfo struct {
	end    int64
	rawLen int64
	raw    digest.Digest // the raw block, when a block map named it (knownBlock)
	// rawPre hashes its raw content but the last len(tail) bytes, which
	// tail holds: the block's digest leaves its padding out.
	rawPre hash.Hash
	tail   []byte
	member digest.Digest // of its compressed bytes
	err    error
}

// gzipMagic is the header every member of a block-framed gzip layer starts
// with (docs/FORMAT.md section 2).
var gzipMagic = []byte{0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff}

// memberCandidates calls found, in order, with every offset where
// gzipMagic occurs.
func memberCandidates(ctx context.Context, r io.ReaderAt, size int64, found func(int64) error) error {
	const chunk = 1 << 20
	buf := make([]byte, chunk+len(gzipMagic)-1)
	for off := int64(0); off < size; off += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(len(buf)), size-off))
		if k, err := r.ReadAt(buf[:n], off); k < n {
			return fmt.Errorf("read standard layer at %d: %d of %d bytes: %w", off, k, n, err)
		}
		b := buf[:n]
		for i := 0; ; {
			k := bytes.Index(b[i:], gzipMagic)
			if k < 0 || i+k >= chunk {
				break
			}
			if err := found(off + int64(i+k)); err != nil {
				return err
			}
			i += k + 1
		}
	}
	return nil
}

// inflateBudget bounds what Dehydrate inflates and holds, whatever the
// layer (it reads bytes not yet verified): raw bytes inflated at most
// inflateShare times the layer's size (and at least inflateFloor), header
// records held at most MaxLayoutHeaders. Beyond, ErrTooLarge: the caller
// reads the blocked layer instead.
type inflateBudget struct {
	raw, heads atomic.Int64
	maxRaw     int64
}

const inflateShare = 16

// inflateFloor is a variable for tests.
var inflateFloor int64 = 256 << 20

func newInflateBudget(size int64) *inflateBudget {
	return &inflateBudget{maxRaw: max(inflateShare*size, inflateFloor)}
}

func (b *inflateBudget) spend(raw int64) error {
	if b.raw.Add(raw) > b.maxRaw {
		return fmt.Errorf("more than %d bytes inflated: %w", b.maxRaw, ErrTooLarge)
	}
	return nil
}

func (b *inflateBudget) hold(heads int64) error {
	if b.heads.Add(heads) > MaxLayoutHeaders {
		return fmt.Errorf("header records of more than %d bytes: %w", MaxLayoutHeaders, ErrTooLarge)
	}
	return nil
}

// memberReader inflates members, reusing its buffers: a small read-ahead
// to probe a candidate, a large one to inflate a block member.
type memberReader struct {
	budget    *inflateBudget
	probeOnly bool // find header members; knownBlocks reads block members
	gz        gzip.Reader
	small     *bufio.Reader
	large     *bufio.Reader
	cnt       countingReaderAt
	buf       []byte
	mh        hash.Hash
}

// countingReaderAt reads a section sequentially and counts.
type countingReaderAt struct {
	r   io.ReaderAt
	off int64
	end int64
}

func (c *countingReaderAt) Read(p []byte) (int, error) {
	if c.off >= c.end {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), c.end-c.off)]
	n, err := c.r.ReadAt(p, c.off)
	c.off += int64(n)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
}

func (m *memberReader) init() {
	if m.small == nil {
		m.small = bufio.NewReaderSize(&m.cnt, 4<<10)
		m.large = bufio.NewReaderSize(&m.cnt, 256<<10)
		m.buf = make([]byte, 256<<10)
		m.mh = sha256.New()
	}
}

// open starts inflating the member at start through br (reset on the
// section from there); it returns false if no gzip member starts there.
func (m *memberReader) open(r io.ReaderAt, br *bufio.Reader, start, size int64) bool {
	m.cnt = countingReaderAt{r: r, off: start, end: size}
	br.Reset(&m.cnt)
	if err := m.gz.Reset(br); err != nil {
		return false
	}
	m.gz.Multistream(false)
	return true
}

// probe says whether a header member starts at info.start (reading at most
// a header's worth of it), and if so inflates the block member after it.
// It fails only when the budget is spent.
func (m *memberReader) probe(r io.ReaderAt, info *memberInfo, size int64) error {
	m.init()
	if !m.open(r, m.small, info.start, size) {
		return nil
	}
	// A plain header record and one byte more, or after an extended
	// header up to MaxStubHeader+1 bytes: a header member ends within.
	raw := m.buf[:0]
	limit := 513
	for len(raw) < limit {
		n, err := m.gz.Read(m.buf[len(raw):limit])
		if n == 0 && err == nil {
			return nil // a reader that makes no progress: not a header member
		}
		raw = m.buf[:len(raw)+n]
		if berr := m.budget.spend(int64(n)); berr != nil {
			return berr
		}
		if len(raw) > 156 && limit == 513 {
			switch headLimit(raw[156]) {
			case 0:
				return nil
			case MaxStubHeader:
				limit = MaxStubHeader + 1
				if len(m.buf) < limit {
					nb := make([]byte, limit)
					copy(nb, raw)
					m.buf, raw = nb, nb[:len(raw)]
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil
		}
	}
	if len(raw) >= limit {
		return nil // longer than header records
	}
	h, ok := headerOnly(raw)
	if !ok {
		return nil
	}
	if err := m.budget.hold(int64(len(raw))); err != nil {
		return err
	}
	info.hdr, info.hrec = h, append([]byte(nil), raw...)
	info.end = m.cnt.off - int64(m.small.Buffered())
	if m.probeOnly {
		return nil
	}
	info.block = m.inflateBlock(r, info.end, size, h.Size+(512-h.Size%512)%512)
	if errors.Is(info.block.err, ErrTooLarge) {
		return info.block.err
	}
	return nil
}

// inflateBlock inflates the member at start whole: its end, raw length,
// raw digest (less the padding, held apart) and member digest.
// want is the raw size its header member gives (with padding): it is read
// no further.
func (m *memberReader) inflateBlock(r io.ReaderAt, start, size, want int64) blockInfo {
	var b blockInfo
	if !m.open(r, m.large, start, size) {
		b.err = fmt.Errorf("no gzip member at offset %d: %w", start, ErrMalformed)
		return b
	}
	b.rawPre = sha256.New()
	const keep = 511 // at most a block's padding
	var tail []byte
	for {
		n, err := m.gz.Read(m.buf)
		if n == 0 && err == nil {
			b.err = fmt.Errorf("offset %d: no progress: %w", start, ErrMalformed)
			return b
		}
		p := m.buf[:n]
		b.rawLen += int64(n)
		if b.rawLen > want {
			b.err = fmt.Errorf("offset %d: more than the %d bytes its header member gives: %w", start, want, ErrMalformed)
			return b
		}
		if berr := m.budget.spend(int64(n)); berr != nil {
			b.err = berr
			return b
		}
		// Hash all but the last keep bytes read, holding those in tail
		// (copying only them).
		if n >= keep {
			b.rawPre.Write(tail)
			b.rawPre.Write(p[:n-keep])
			tail = append(tail[:0], p[n-keep:]...)
		} else if over := len(tail) + n - keep; over > 0 {
			b.rawPre.Write(tail[:over])
			tail = append(tail[:0], tail[over:]...)
			tail = append(tail, p...)
		} else {
			tail = append(tail, p...)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.err = fmt.Errorf("offset %d: %v: %w", start, err, ErrMalformed)
			return b
		}
	}
	b.tail = tail
	b.end = m.cnt.off - int64(m.large.Buffered())
	// Its compressed bytes name the block member.
	m.mh.Reset()
	if _, err := io.CopyBuffer(m.mh, io.NewSectionReader(r, start, b.end-start), m.buf); err != nil {
		b.err = fmt.Errorf("read: %w", err)
		return b
	}
	b.member = digest.NewDigest(digest.SHA256, m.mh)
	return b
}

// headLimit is the most raw content a member whose first header record has
// this typeflag holds if it is a header member: one record for a regular
// file, MaxStubHeader after extended headers, none for anything else.
func headLimit(typeflag byte) int {
	switch typeflag {
	case tar.TypeReg, tar.TypeRegA:
		return 512
	case tar.TypeXHeader, tar.TypeXGlobalHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return MaxStubHeader
	}
	return 0
}

// headerOnly says whether raw is exactly the header records of one regular,
// non-sparse file of non-zero size, and returns its header.
func headerOnly(raw []byte) (*tar.Header, bool) {
	if len(raw) == 0 || len(raw)%512 != 0 {
		return nil, false
	}
	cr := &countReader{r: bytes.NewReader(raw)}
	tr := tar.NewReader(cr)
	h, err := tr.Next()
	if err != nil || h.Typeflag != tar.TypeReg || h.Size <= 0 || isSparse(h.Typeflag, h.PAXRecords) {
		return nil, false
	}
	return h, cr.n == int64(len(raw))
}

// assembleBlocked writes the blocked layer: the bytes between block
// members and the next header member as they are (verbatim members), each
// run of header and block members as a stub member.
func assembleBlocked(ctx context.Context, std io.ReaderAt, size int64, infos []*memberInfo, blocked io.Writer) ([]Part, error) {
	comp, err := newCompressor(blocks.Gzip)
	if err != nil {
		return nil, err
	}
	defer comp.close()
	var out int64
	w := countingWriter{w: blocked, n: &out}
	lw := &layoutWriter{}
	var stubs []byte
	runN := 0
	flush := func() error {
		if runN == 0 {
			return nil
		}
		zw := comp.begin(w)
		if _, err := zw.Write(stubs); err != nil {
			return fmt.Errorf("write blocked layer: %w", err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("write blocked layer: %w", err)
		}
		stubs, runN = stubs[:0], 0
		return nil
	}
	buf := make([]byte, 256<<10)
	verbatim := func(from, to int64) error {
		if to <= from {
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		size := to - from
		if _, err := io.CopyBuffer(w, io.NewSectionReader(std, from, size), buf); err != nil {
			return fmt.Errorf("write blocked layer: %w", err)
		}
		lw.verbatimOpen = false
		return lw.add(Part{Kind: PartVerbatim, Offset: from, Size: size, BlockedOffset: out - size})
	}
	var pos int64
	for _, m := range infos {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if m.hdr == nil || m.start < pos {
			continue // not a header member, or inside a block member
		}
		h, b := m.hdr, &m.block
		if b.err != nil {
			return nil, fmt.Errorf("standard layer: block member of %q after the header member at offset %d: %w", h.Name, m.start, b.err)
		}
		if err := verbatim(pos, m.start); err != nil {
			return nil, err
		}
		raw, err := b.rawDigest(h, m.end)
		if err != nil {
			return nil, err
		}
		block := blocks.Ref{Digest: raw, Size: h.Size}
		member := blocks.Ref{Digest: b.member, Size: b.end - m.end}
		if err := lw.add(Part{Kind: PartHeader, Offset: m.start, Size: m.end - m.start, Member: member.Digest, Block: block.Digest, Header: m.hrec}); err != nil {
			return nil, err
		}
		if err := lw.add(Part{Kind: PartMember, Offset: m.end, Size: member.Size, Member: member.Digest, Block: block.Digest}); err != nil {
			return nil, err
		}
		e, err := stubEntry(h.Name, blocks.Stub{Block: block, Member: member, Header: m.hrec})
		if err != nil {
			return nil, fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
		if runN > 0 && (runN >= maxRunStubs || len(stubs)+len(e) > maxRunBytes) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		stubs = append(stubs, e...)
		runN++
		pos = b.end
	}
	if err := verbatim(pos, size); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return lw.parts, nil
}

// rawDigest is the digest of the block the member holds (of the file h
// names, at offset off): the block map's word, or what rawPre hashed and
// the tail but the padding, which must be zero.
func (b *blockInfo) rawDigest(h *tar.Header, off int64) (digest.Digest, error) {
	pad := (512 - h.Size%512) % 512
	if b.raw != "" {
		return b.raw, nil
	}
	if b.rawLen != h.Size+pad || int64(len(b.tail)) < pad {
		return "", fmt.Errorf("standard layer member at offset %d: block member of %q holds %d bytes, its header says %d and %d of padding: %w", off, h.Name, b.rawLen, h.Size, pad, ErrMalformed)
	}
	split := int64(len(b.tail)) - pad
	for _, c := range b.tail[split:] {
		if c != 0 {
			return "", fmt.Errorf("standard layer member at offset %d: block member of %q has non-zero padding: %w", off, h.Name, ErrMalformed)
		}
	}
	hc, err := b.rawPre.(hash.Cloner).Clone()
	if err != nil {
		return "", err
	}
	hc.Write(b.tail[:split])
	return digest.NewDigest(digest.SHA256, hc), nil
}

// countingWriter counts what goes to the blocked layer.
type countingWriter struct {
	w io.Writer
	n *int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	*c.n += int64(n)
	return n, err
}
