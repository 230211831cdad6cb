package layer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/archive/tar"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/internal/deflate"
)

// verbatimCap is the uncompressed size after which a verbatim member ends at
// the next entry boundary, so that no member of a blocked layer is large.
const verbatimCap = 1 << 20

const copyBufSize = 1 << 20

// Limits of the pipeline between the goroutine that reads the tar and the
// one that writes the layers in order. They bound memory (a queued segment
// holds at most one 1 MiB gzip piece, or segChunk bytes of zstd verbatim data,
// and their compressed form) and disk (each queued block holds a spool file).
const (
	// segChunk: a zstd verbatim segment is queued when this much
	// uncompressed data is pending.
	segChunk = 256 << 10
	// queueLen segments are queued at most.
	queueLen = 8
	// memberWorkers make block members side by side, and as many deflaters
	// deflate gzip pieces (of block and verbatim members alike): the machines
	// we target have two cores. The reading goroutine spools and hashes; the
	// writer copies, hashes and writes stubs.
	memberWorkers = 2
	// A stub member ends before a stub entry that would make it hold more
	// than maxRunStubs entries or maxRunBytes uncompressed bytes.
	maxRunStubs = 256
	maxRunBytes = 1 << 20
)

// Split reads an uncompressed tar and writes the block-framed standard layer to
// std and the blocked layer to blocked (see docs/FORMAT.md). New block members
// are pushed to opts.Members and recorded there; members it already holds are
// reused. The uncompressed stream of the standard layer is the input byte for
// byte: Split hashes both and fails if they differ.
//
// The calling goroutine reads the tar; block data is spooled to a temp file
// and made into its member by one of two workers; gzip members are deflated in
// 1 MiB pieces on two deflaters (docs/FORMAT.md section 2); a writer goroutine
// drains an ordered, bounded queue of segments (verbatim pieces, or a block
// whose member is being made) into std and blocked, so the output is the same
// whatever the scheduling. opts.Members must be safe for use by several
// goroutines (Split serializes its own Push and RecordMember calls, but Fetch,
// Exists and LookupMember may run concurrently).
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
	scomp, err := newCompressor(c)
	if err != nil {
		return nil, err
	}
	defer scomp.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inHash := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(tarStream, inHash), copyBufSize)
	sp := &splitter{
		ctx:   ctx,
		c:     c,
		opts:  opts,
		comp:  comp,
		br:    br,
		buf:   make([]byte, copyBufSize),
		known: map[digest.Digest]*memberJob{},
		queue: make(chan segment, queueLen),
		jobs:  make(chan *memberJob, memberWorkers),
		wdone: make(chan struct{}),
		wr: &layerWriter{
			c:       c,
			comp:    scomp,
			std:     newDigestWriter(std),
			blk:     newDigestWriter(blocked),
			emitted: sha256.New(),
			buf:     make([]byte, copyBufSize),
		},
	}
	sp.wr.sp = sp
	var workers, deflaters sync.WaitGroup
	if c == blocks.Gzip {
		sp.chunks = make(chan *chunkTask, memberWorkers)
		for range memberWorkers {
			deflaters.Add(1)
			go func() {
				defer deflaters.Done()
				plain, _ := deflate.NewWriter(io.Discard, gzipLevel) // the level is valid
				for t := range sp.chunks {
					t.run(plain)
				}
			}()
		}
	}
	for range memberWorkers {
		k, err := newCompressor(c)
		if err != nil {
			return nil, err
		}
		workers.Add(1)
		go func() {
			defer workers.Done()
			defer k.close()
			sp.worker(k)
		}()
	}
	go sp.wr.loop()

	err = sp.run()
	if err != nil {
		cancel() // workers skip what is queued; the writer drains
	}
	close(sp.queue)
	close(sp.jobs)
	<-sp.wdone
	workers.Wait()
	if sp.chunks != nil {
		close(sp.chunks)
		deflaters.Wait()
	}
	sp.cleanup()
	if sp.wr.err != nil && (err == nil || errors.Is(err, errWriterFailed)) {
		err = sp.wr.err
	}
	if err != nil {
		return nil, err
	}

	wr := sp.wr
	diffID := digest.NewDigest(digest.SHA256, inHash)
	if got := digest.NewDigest(digest.SHA256, wr.emitted); got != diffID || wr.emittedN != sp.inN {
		return nil, fmt.Errorf("split: standard layer would decompress to %s (%d bytes), input is %s (%d bytes): %w",
			got, wr.emittedN, diffID, sp.inN, ErrMismatch)
	}
	for i := range sp.blocks {
		sp.blocks[i].Member = sp.blockJobs[i].desc
	}
	res := &SplitResult{
		DiffID:   diffID,
		Standard: ocispec.Descriptor{MediaType: LayerMediaType(c), Digest: wr.std.digest(), Size: wr.std.n},
		Blocks:   sp.blocks,
	}
	res.Blocked = res.Standard
	if len(sp.blocks) > 0 {
		res.Blocked = ocispec.Descriptor{MediaType: LayerMediaType(c), Digest: wr.blk.digest(), Size: wr.blk.n}
	}
	return res, nil
}

// splitter is the state of the reading goroutine.
type splitter struct {
	ctx  context.Context
	c    blocks.Compression
	opts SplitOptions
	comp *compressor // verbatim members
	br   *bufio.Reader

	inN int64 // bytes of the input tar (counted as entries are walked)

	vw io.WriteCloser // open zstd verbatim member, or nil
	// The open gzip verbatim member: its CRC and size so far, the dictionary
	// of its next piece, and whether its header is still to be queued.
	vopen, vfirst bool
	vcrc          hash.Hash32
	vtotal        int64
	vdict         []byte
	vn            int64        // its uncompressed size so far
	vout          bytes.Buffer // its compressed bytes not yet queued
	vraw          []byte       // its uncompressed bytes not yet queued
	any           bool         // a member has been written

	buf       []byte
	paths     PathChecker
	blocks    []Block
	blockJobs []*memberJob                 // the member job of each of blocks
	known     map[digest.Digest]*memberJob // members made or found in this split
	files     filePool                     // spool and member temp files

	queue  chan segment    // to the writer, in layer order
	jobs   chan *memberJob // to the workers
	chunks chan *chunkTask // pieces of gzip members, to the deflaters
	wr     *layerWriter
	wdone  chan struct{}
	pushMu sync.Mutex // Push and RecordMember are called one at a time
	failed atomic.Bool
}

// segment is the next piece of both layers, in order: verbatim bytes (the same
// compressed bytes in both layers), or a block (standard: header member and
// block member; blocked: a stub entry in the current stub member).
type segment struct {
	comp, raw []byte // verbatim: compressed bytes, and what they decompress to
	// verbatim gzip: a piece being deflated, with the member's header before
	// it (first piece) and trailer after it (last piece); raw is its data
	task       *chunkTask
	head, tail []byte
	blk        *pendingBlock
}

type pendingBlock struct {
	name string // the entry's tar name
	hrec []byte // its header records
	raw  blocks.Ref
	pad  int64
	job  *memberJob
}

// memberJob makes (or finds) the member of one block. done is closed when
// desc or err is set.
type memberJob struct {
	raw    blocks.Ref
	pad    int64
	spool  *os.File // the block's data; nil once removed
	out    *os.File // the new member's bytes; nil once removed
	desc   ocispec.Descriptor
	reused bool // desc is a member the store held before this split
	used   bool // the writer has copied the new member once (writer only)
	err    error
	done   chan struct{}
}

// releaseFiles gives the job's temp files back to the pool.
func (j *memberJob) releaseFiles(p *filePool) {
	for _, f := range []**os.File{&j.spool, &j.out} {
		if *f != nil {
			p.put(*f)
			*f = nil
		}
	}
}

func (sp *splitter) cleanup() {
	sp.files.close()
	if sp.wr.dec != nil {
		sp.wr.dec.Close()
	}
}

// send queues a segment for the writer. It fails when the writer has failed,
// so that the reader stops early.
func (sp *splitter) send(s segment) error {
	if sp.failed.Load() {
		return errWriterFailed
	}
	select {
	case sp.queue <- s:
		return nil
	case <-sp.ctx.Done():
		return sp.ctx.Err()
	}
}

var errWriterFailed = errors.New("split: layer writer failed")

// verbatim appends raw tar bytes to the open verbatim member (both layers).
// gzip members are deflated in pieces by the deflaters (the reading goroutine
// would otherwise be the bottleneck of layers made of small files); zstd,
// fast enough on one core, is compressed here as the bytes come.
func (sp *splitter) verbatim(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	sp.any = true
	sp.vn += int64(len(p))
	if sp.chunks != nil {
		if !sp.vopen {
			sp.vopen, sp.vfirst, sp.vcrc, sp.vtotal, sp.vdict = true, true, crc32.NewIEEE(), 0, nil
		}
		for len(p) > 0 {
			k := min(len(p), gzipChunk-len(sp.vraw))
			sp.vraw = append(sp.vraw, p[:k]...)
			p = p[k:]
			if len(sp.vraw) == gzipChunk {
				if err := sp.sendPiece(false); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if sp.vw == nil {
		sp.vw = sp.comp.begin(&sp.vout)
	}
	if _, err := sp.vw.Write(p); err != nil {
		return fmt.Errorf("compress layer: %w", err)
	}
	sp.vraw = append(sp.vraw, p...)
	if len(sp.vraw) >= segChunk {
		return sp.sendVerbatim()
	}
	return nil
}

// sendPiece hands the pending bytes of the open gzip verbatim member to the
// deflaters as one piece (see chunkedGzip; the last piece may be empty) and
// queues it for the writer, with the gzip header before the first piece and
// the trailer after the last.
func (sp *splitter) sendPiece(last bool) error {
	data := sp.vraw
	sp.vraw = make([]byte, 0, min(gzipChunk, 2*len(data)+4096))
	sp.vcrc.Write(data)
	sp.vtotal += int64(len(data))
	t := &chunkTask{dict: sp.vdict, data: data, last: last, done: make(chan struct{})}
	sp.vdict = nextDict(sp.vdict, data)
	seg := segment{task: t, raw: data}
	if sp.vfirst {
		seg.head, sp.vfirst = gzipFixedHeader[:], false
	}
	if last {
		seg.tail = binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, sp.vcrc.Sum32()), uint32(sp.vtotal))
	}
	select {
	case sp.chunks <- t:
	case <-sp.ctx.Done():
		return sp.ctx.Err()
	}
	return sp.send(seg)
}

// sendVerbatim queues the pending verbatim bytes (zstd, and the empty member).
func (sp *splitter) sendVerbatim() error {
	if len(sp.vraw) == 0 && sp.vout.Len() == 0 {
		return nil
	}
	s := segment{comp: bytes.Clone(sp.vout.Bytes()), raw: sp.vraw}
	sp.vout.Reset()
	sp.vraw = make([]byte, 0, segChunk)
	return sp.send(s)
}

// Write makes the splitter the io.Writer of verbatim bytes.
func (sp *splitter) Write(p []byte) (int, error) {
	if err := sp.verbatim(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (sp *splitter) closeVerbatim() error {
	if sp.vopen {
		sp.vopen, sp.vn = false, 0
		return sp.sendPiece(true)
	}
	if sp.vw == nil {
		return nil
	}
	err := sp.vw.Close()
	sp.vw, sp.vn = nil, 0
	if err != nil {
		return fmt.Errorf("compress layer: %w", err)
	}
	return sp.sendVerbatim()
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
		var pass func([]byte) error
		if !prevExact && !prevBlock {
			// After a sparse entry everything Next reads goes out
			// verbatim (tail below is all of it): stream it.
			pass = sp.verbatim
		}
		capture.start(pass)
		hdr, err := tr.Next()
		raw, passed := capture.stop()
		sp.inN += int64(len(raw)) + passed
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
		if err := sp.comp.begin(&sp.vout).Close(); err != nil {
			return fmt.Errorf("compress layer: %w", err)
		}
		return sp.sendVerbatim()
	}
	return nil
}

// block handles a block candidate whose header records are hrec. It returns
// false when the entry turned out not to be a block (non-zero padding, a header
// Go's archive/tar reads differently, a name no stub can carry); the entry is
// then written verbatim.
func (sp *splitter) block(tr *tar.Reader, hdr *tar.Header, hrec []byte, pad int64) (bool, error) {
	// Spool the data while hashing it: the block digest must be known before
	// the member can be looked up, and a block is never held in memory. Each
	// block has its own spool file: a worker compresses it while the next
	// entries are read.
	spool, err := sp.tempFile("spool")
	if err != nil {
		return false, err
	}
	keep := false
	defer func() {
		if !keep {
			sp.files.put(spool)
		}
	}()
	h := sha256.New()
	if err := sp.copyData(tr, hdr, io.MultiWriter(spool, h)); err != nil {
		return false, err
	}
	raw := blocks.Ref{Digest: digest.NewDigest(digest.SHA256, h), Size: hdr.Size}

	ok, err := sp.eligible(hdr, hrec, pad)
	if err != nil {
		return false, err
	}
	if ok {
		// Whether a stub entry can be written depends only on the name and
		// the header; the writer makes the real one once the member is known.
		_, err := stubEntry(hdr.Name, blocks.Stub{Block: raw, Member: raw, Header: hrec})
		ok = err == nil
	}
	if !ok {
		if err := sp.boundary(); err != nil {
			return false, err
		}
		if err := sp.verbatim(hrec); err != nil {
			return false, err
		}
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
		if _, err := io.CopyBuffer(sp, io.LimitReader(spool, hdr.Size), sp.buf); err != nil {
			return false, fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
		return false, nil
	}

	if err := sp.closeVerbatim(); err != nil {
		return false, err
	}
	job, kept, err := sp.member(raw, pad, spool)
	keep = kept
	if err != nil {
		return false, fmt.Errorf("layer entry %q: block %s: %w", hdr.Name, raw.Digest, err)
	}
	sp.any = true
	sp.blocks = append(sp.blocks, Block{Path: hdr.Name, Raw: raw})
	sp.blockJobs = append(sp.blockJobs, job)
	return true, sp.send(segment{blk: &pendingBlock{name: hdr.Name, hrec: bytes.Clone(hrec), raw: raw, pad: pad, job: job}})
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

// member returns the job that gives raw its member: the one already made or
// found in this split, a member the store holds, or a new job, handed to the
// workers, that compresses spool. kept reports that the job owns spool.
func (sp *splitter) member(raw blocks.Ref, pad int64, spool *os.File) (_ *memberJob, kept bool, _ error) {
	if j, ok := sp.known[raw.Digest]; ok {
		return j, false, nil
	}
	if sp.opts.Members == nil {
		return nil, false, errors.New("no member store given to Split")
	}
	j := &memberJob{raw: raw, pad: pad, done: make(chan struct{})}
	old, found, err := sp.opts.Members.LookupMember(sp.ctx, raw.Digest, sp.c)
	if err != nil {
		return nil, false, fmt.Errorf("look up member: %w", err)
	}
	if found {
		ok, err := sp.opts.Members.Exists(sp.ctx, old.Digest)
		if err != nil {
			return nil, false, fmt.Errorf("member %s: %w", old.Digest, err)
		}
		if ok {
			j.desc, j.reused = memberDesc(sp.c, raw, old.Digest, old.Size), true
			close(j.done)
			sp.known[raw.Digest] = j
			return j, false, nil
		}
	}
	j.spool = spool
	select {
	case sp.jobs <- j:
		sp.known[raw.Digest] = j
		return j, true, nil
	case <-sp.ctx.Done():
		return nil, true, sp.ctx.Err()
	}
}

func memberDesc(c blocks.Compression, raw blocks.Ref, d digest.Digest, n int64) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: c.MemberMediaType(), Digest: d, Size: n,
		Annotations: map[string]string{blocks.AnnotationBlockDigest: raw.Digest.String()}}
}

// worker makes the members of the jobs it is given.
func (sp *splitter) worker(k *compressor) {
	buf := make([]byte, copyBufSize)
	for j := range sp.jobs {
		if err := sp.ctx.Err(); err != nil {
			j.err = err
		} else {
			j.err = sp.makeMember(k, j, buf)
		}
		close(j.done)
	}
}

// makeMember compresses the job's spool and padding into a temp file and
// pushes it to the store.
func (sp *splitter) makeMember(k *compressor, j *memberJob, buf []byte) error {
	out, err := sp.tempFile("member")
	if err != nil {
		return err
	}
	j.out = out
	if _, err := j.spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	mw := newDigestWriter(out)
	data := io.MultiReader(io.LimitReader(j.spool, j.raw.Size), bytes.NewReader(make([]byte, j.pad)))
	if sp.chunks != nil {
		if err := chunkedGzip(sp.ctx, mw, data, j.raw.Size+j.pad, sp.chunks); err != nil {
			return fmt.Errorf("compress: %w", err)
		}
	} else {
		zw := k.begin(mw)
		if _, err := io.CopyBuffer(zw, data, buf); err != nil {
			return fmt.Errorf("compress: %w", err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("compress: %w", err)
		}
	}
	d := memberDesc(sp.c, j.raw, mw.digest(), mw.n)
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("member temp file: %w", err)
	}
	sp.pushMu.Lock()
	defer sp.pushMu.Unlock()
	if err := sp.opts.Members.Push(sp.ctx, d, io.LimitReader(out, d.Size)); err != nil {
		return fmt.Errorf("push member %s: %w", d.Digest, err)
	}
	if err := sp.opts.Members.RecordMember(sp.ctx, j.raw.Digest, sp.c, d); err != nil {
		return fmt.Errorf("record member %s: %w", d.Digest, err)
	}
	j.desc = d
	return nil
}

func (sp *splitter) tempFile(what string) (*os.File, error) {
	return sp.files.get(sp.opts.TempDir, what)
}

// filePool recycles temp files: creating and removing one per block costs
// more than compressing a small block on some file systems (ext4 mounted
// with discard: about 1 ms each). A file handed out is at offset 0 but not
// truncated; every user knows the size it wrote and reads exactly that. The
// pool holds as many files as were in use at once, a bounded number.
type filePool struct {
	mu   sync.Mutex
	free []*os.File
	all  []*os.File
}

func (p *filePool) get(dir, what string) (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		f := p.free[n-1]
		p.free = p.free[:n-1]
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("%s temp file: %w", what, err)
		}
		return f, nil
	}
	f, err := os.CreateTemp(dir, "blockfile-split-*")
	if err != nil {
		return nil, fmt.Errorf("%s temp file: %w", what, err)
	}
	p.all = append(p.all, f)
	return f, nil
}

func (p *filePool) put(f *os.File) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free = append(p.free, f)
}

// close removes every file of the pool; call it once nothing uses them.
func (p *filePool) close() {
	for _, f := range p.all {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}
	p.all, p.free = nil, nil
}

// layerWriter is the writer goroutine: it drains the queue in order into the
// two layers, waiting for each block's member, and groups consecutive stubs
// into stub members.
type layerWriter struct {
	sp       *splitter
	c        blocks.Compression
	comp     *compressor // stub members
	std, blk *digestWriter
	emitted  hash.Hash // uncompressed bytes put into the standard layer
	emittedN int64
	buf      []byte
	err      error

	run  []byte // the stub entries of the open stub member
	runN int

	dec *zstd.Decoder
	gzr *gzip.Reader
}

func (w *layerWriter) loop() {
	defer close(w.sp.wdone)
	for s := range w.sp.queue {
		if w.err != nil {
			continue // drain, so that the reader never blocks
		}
		if err := w.segment(s); err != nil {
			w.err = err
			w.sp.failed.Store(true)
		}
	}
	if w.err == nil {
		w.err = w.flushStubs()
	}
}

func (w *layerWriter) emit(p []byte) {
	w.emitted.Write(p)
	w.emittedN += int64(len(p))
}

func (w *layerWriter) segment(s segment) error {
	b := s.blk
	if b == nil {
		if err := w.flushStubs(); err != nil {
			return err
		}
		parts := [][]byte{s.comp}
		if t := s.task; t != nil {
			<-t.done
			if t.err != nil {
				return fmt.Errorf("compress layer: %w", t.err)
			}
			parts = [][]byte{s.head, t.out.Bytes(), s.tail}
		}
		for _, p := range parts {
			if _, err := w.std.Write(p); err != nil {
				return fmt.Errorf("write layer: %w", err)
			}
			if _, err := w.blk.Write(p); err != nil {
				return fmt.Errorf("write blocked layer: %w", err)
			}
		}
		w.emit(s.raw)
		return nil
	}
	j := b.job
	<-j.done
	if j.err != nil {
		return fmt.Errorf("layer entry %q: block %s: %w", b.name, b.raw.Digest, j.err)
	}
	// Standard layer: m_hdr, then m_data.
	if err := WriteHeaderMember(w.std, w.c, b.hrec); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	w.emit(b.hrec)
	var err error
	if j.reused || j.used {
		err = w.copyReused(j.desc, b.raw, b.pad)
	} else {
		err = w.copyNew(j)
		j.used = true
		j.releaseFiles(&w.sp.files)
	}
	if err != nil {
		return fmt.Errorf("layer entry %q: block %s: %w", b.name, b.raw.Digest, err)
	}
	// Blocked layer: a stub entry in the open stub member.
	e, err := stubEntry(b.name, blocks.Stub{Block: b.raw, Member: blocks.Ref{Digest: j.desc.Digest, Size: j.desc.Size}, Header: b.hrec})
	if err != nil {
		return fmt.Errorf("layer entry %q: %w", b.name, err)
	}
	if w.runN > 0 && (w.runN >= maxRunStubs || len(w.run)+len(e) > maxRunBytes) {
		if err := w.flushStubs(); err != nil {
			return err
		}
	}
	w.run = append(w.run, e...)
	w.runN++
	return nil
}

// flushStubs writes the open stub member, if any, to the blocked layer.
func (w *layerWriter) flushStubs() error {
	if w.runN == 0 {
		return nil
	}
	zw := w.comp.begin(w.blk)
	if _, err := zw.Write(w.run); err != nil {
		return fmt.Errorf("write blocked layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("write blocked layer: %w", err)
	}
	w.run, w.runN = w.run[:0], 0
	return nil
}

// copyNew copies a member just made into the standard layer. The bytes it
// holds are the spool's, which went through the compressor.
func (w *layerWriter) copyNew(j *memberJob) error {
	member := j.desc
	if _, err := j.out.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("member temp file: %w", err)
	}
	if n, err := io.CopyBuffer(w.std, io.LimitReader(j.out, member.Size), w.buf); err != nil || n != member.Size {
		return fmt.Errorf("copy member %s (%d of %d bytes): %v", member.Digest, n, member.Size, err)
	}
	if _, err := j.spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if _, err := io.CopyBuffer(writerFunc(func(p []byte) (int, error) { w.emit(p); return len(p), nil }),
		io.LimitReader(j.spool, j.raw.Size), w.buf); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	w.emit(make([]byte, j.pad))
	return nil
}

// copyReused copies a stored member into the standard layer, decompressing it
// on the way: what it holds must be the block's bytes and zero padding, or the
// standard layer would not be the input.
func (w *layerWriter) copyReused(member ocispec.Descriptor, raw blocks.Ref, pad int64) error {
	sp := w.sp
	rc, err := sp.opts.Members.Fetch(sp.ctx, member)
	if err != nil {
		return fmt.Errorf("fetch member %s: %w", member.Digest, err)
	}
	defer rc.Close()
	cw := &countWriter{w: w.std}
	tee := io.TeeReader(io.LimitReader(rc, member.Size+1), cw)
	var dec io.Reader
	if w.c == blocks.Zstd {
		if w.dec == nil {
			w.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
			if err != nil {
				return err
			}
		}
		if err := w.dec.Reset(tee); err != nil {
			return fmt.Errorf("member %s: %w", member.Digest, err)
		}
		dec = w.dec
	} else {
		if w.gzr == nil {
			w.gzr = new(gzip.Reader)
		}
		if err := w.gzr.Reset(tee); err != nil {
			return fmt.Errorf("member %s: %w", member.Digest, err)
		}
		dec = w.gzr
	}
	h := sha256.New()
	var tailBuf bytes.Buffer
	n, err := io.CopyBuffer(io.MultiWriter(h, writerFunc(func(p []byte) (int, error) { w.emit(p); return len(p), nil })),
		io.LimitReader(dec, raw.Size), w.buf)
	if err != nil || n != raw.Size {
		return fmt.Errorf("member %s: decompress (%d of %d bytes): %v: %w", member.Digest, n, raw.Size, err, ErrMismatch)
	}
	if _, err := io.Copy(&tailBuf, io.LimitReader(dec, pad+1)); err != nil {
		return fmt.Errorf("member %s: decompress: %v: %w", member.Digest, err, ErrMismatch)
	}
	if int64(tailBuf.Len()) != pad || !allZero(tailBuf.Bytes()) || digest.NewDigest(digest.SHA256, h) != raw.Digest {
		return fmt.Errorf("member %s does not hold block %s and its padding: %w", member.Digest, raw.Digest, ErrMismatch)
	}
	w.emit(tailBuf.Bytes())
	if _, err := io.CopyBuffer(io.Discard, tee, w.buf); err != nil {
		return fmt.Errorf("member %s: %w", member.Digest, err)
	}
	if cw.n != member.Size {
		return fmt.Errorf("member %s: read %d bytes, want %d: %w", member.Digest, cw.n, member.Size, ErrMismatch)
	}
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
	// pass, if set, receives the bytes instead of buf, as they are read:
	// after a sparse entry, whose unread physical data the tar reader skips
	// in Next (gigabytes of zeros from a few megabytes of gzip), all of
	// what Next consumes is written verbatim, so none of it is held.
	pass   func([]byte) error
	passed int64
}

func (c *captureReader) start(pass func([]byte) error) {
	c.on, c.buf, c.pass, c.passed = true, c.buf[:0], pass, 0
}

// stop ends the capture and returns what was kept (nothing if passed on)
// and how many bytes were passed on.
func (c *captureReader) stop() ([]byte, int64) {
	c.on, c.pass = false, nil
	if cap(c.buf) > 1<<20 {
		// Headers are small; do not keep a large buffer around.
		defer func() { c.buf = nil }()
	}
	return c.buf, c.passed
}

func (c *captureReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	switch {
	case !c.on:
	case c.pass != nil:
		if perr := c.pass(p[:n]); perr != nil {
			return n, perr
		}
		c.passed += int64(n)
	default:
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
