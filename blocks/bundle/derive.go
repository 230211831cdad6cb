package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// Standard layers in place of their blocked form. When every file of a
// layer changes a little, its blocks, their deltas, the blocked layer and the
// block set can cost more than the standard layer whole: bundle create then
// ships the standard layer (Blob.Derive) and apply derives the blocked form
// from it, so the site's store ends up exactly as if the blocked form had
// travelled. A block-framed standard layer holds everything its blocked form
// is made of (docs/FORMAT.md sections 2 to 5): its verbatim members are the
// blocked layer's, each block is a header member (whose bytes are the stub's
// h) followed by the block's member, and the stubs, their grouping into stub
// members (runs cut at 256 entries or 1 MiB) and the block set follow from
// those. Apply checks the derived blocked layer and block set against the
// digests the header names (and the blocked manifest and image index name),
// and the block set names every member: nothing derived is trusted unchecked.
// Create derives the same way first and ships the standard layer only when
// the derivation reproduces the blocked form exactly.

// Derive says that a standard layer travels in place of its blocked form.
type Derive struct {
	// Blocked is the blocked layer derived from the standard layer.
	Blocked BlobRef `json:"blocked"`
	// BlockSet is the block-set manifest of Blocked, derived with it; the
	// block members it lists are cut from the standard layer.
	BlockSet BlobRef `json:"blockSet"`
}

// check validates a Derive read from a header of version v.
func (d *Derive) check(b Blob, v int) error {
	if v < VersionDerive {
		return fmt.Errorf("blob %s: derive needs header version %d", b.Digest, VersionDerive)
	}
	if b.Kind != KindLayer || b.Patch != nil || b.MediaType != ocispec.MediaTypeImageLayerGzip && b.MediaType != transport.MediaTypeDockerLayerGzip {
		return fmt.Errorf("blob %s: only a gzip standard layer shipped whole derives a blocked form (%s, %s)", b.Digest, b.Kind, b.MediaType)
	}
	for _, r := range []BlobRef{d.Blocked, d.BlockSet} {
		if err := r.Digest.Validate(); err != nil || r.Digest.Algorithm() != digest.SHA256 || r.Size <= 0 || r.Digest == b.Digest {
			return fmt.Errorf("blob %s: derived blob %q (%d bytes) is not a valid sha256 blob", b.Digest, r.Digest, r.Size)
		}
	}
	if d.BlockSet.Size > maxJSONSize {
		return fmt.Errorf("blob %s: derived block set of %d bytes, limit %d: %w", b.Digest, d.BlockSet.Size, maxJSONSize, ErrBound)
	}
	return nil
}

// Limits of a derivation: what is held per block while the standard layer is
// read (offsets, digests, the raw tar header), and the block set's size.
const (
	maxDerivedBlocks  = 1 << 17
	maxDerivedHeaders = 64 << 20
)

// derivedBlock is a block of the standard layer: its header member's raw
// tar header, its block, and where its member lies in the standard layer.
type derivedBlock struct {
	name    string
	hrec    []byte
	raw     blocks.Ref
	off, n  int64 // the block member in the standard layer
	verbOff int64 // verbatim bytes before it start here (in the standard layer)
	verbN   int64
}

// derivation is the blocked form derived from a standard layer.
type derivation struct {
	blocked  ocispec.Descriptor
	blockSet []byte
	setDesc  ocispec.Descriptor
	members  []derivedMember // distinct, in block-set order
	spool    *os.File        // the standard layer's bytes
}

type derivedMember struct {
	desc   ocispec.Descriptor
	off, n int64
}

func (d *derivation) close() {
	if d != nil && d.spool != nil {
		d.spool.Close()
		os.Remove(d.spool.Name())
	}
}

// member returns a reader of member m's bytes in the standard layer.
func (d *derivation) member(m derivedMember) io.Reader {
	return io.NewSectionReader(d.spool, m.off, m.n)
}

// errNotBlockFramed: the standard layer is not the block-framed gzip layer
// of a blocked form (create then ships the blocked form).
var errNotBlockFramed = errors.New("not a block-framed gzip layer")

// deriveBlocked reads the block-framed gzip standard layer from r (spooling
// it to a temp file in dir) and writes its blocked layer to blocked. The
// caller checks r's digest, and the derived digests against what it expects.
func deriveBlocked(ctx context.Context, r io.Reader, dir, mediaType string, blocked io.Writer) (_ *derivation, err error) {
	spool, err := os.CreateTemp(dir, store.TempPattern("derive"))
	if err != nil {
		return nil, err
	}
	d := &derivation{spool: spool}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	blks, tail, err := scanStandard(ctx, r, spool)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	bw := &countingWriter{w: io.MultiWriter(blocked, h)}
	var run []byte
	runN := 0
	flush := func() error {
		if runN == 0 {
			return nil
		}
		err := layer.GzipMember(bw, run, layer.FormOneStream)
		run, runN = run[:0], 0
		return err
	}
	verbatim := func(off, n int64) error {
		if n == 0 {
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		_, err := io.Copy(bw, io.NewSectionReader(spool, off, n))
		return err
	}
	seen := map[digest.Digest]bool{}
	mh := sha256.New()
	for _, b := range blks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := verbatim(b.verbOff, b.verbN); err != nil {
			return nil, err
		}
		mh.Reset()
		if _, err := io.Copy(mh, io.NewSectionReader(spool, b.off, b.n)); err != nil {
			return nil, err
		}
		md := digest.NewDigest(digest.SHA256, mh)
		e, err := stubEntry(b.name, blocks.Stub{Block: b.raw, Member: blocks.Ref{Digest: md, Size: b.n}, Header: b.hrec})
		if err != nil {
			return nil, fmt.Errorf("%w: block %q: %v", errNotBlockFramed, b.name, err)
		}
		// The cut rule of stub members (docs/FORMAT.md section 5).
		if runN > 0 && (runN >= 256 || len(run)+len(e) > 1<<20) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		run = append(run, e...)
		runN++
		if !seen[md] {
			seen[md] = true
			d.members = append(d.members, derivedMember{desc: ocispec.Descriptor{MediaType: blocks.Gzip.MemberMediaType(), Digest: md, Size: b.n}, off: b.off, n: b.n})
		}
	}
	if err := verbatim(tail[0], tail[1]); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(blks) == 0 {
		return nil, fmt.Errorf("%w: no blocks", errNotBlockFramed)
	}
	d.blocked = ocispec.Descriptor{MediaType: mediaType, Digest: digest.NewDigest(digest.SHA256, h), Size: bw.n}
	// The block set as export writes it (image.putBlockSet, store.PutJSON).
	var layers []ocispec.Descriptor
	for _, m := range d.members {
		layers = append(layers, m.desc)
	}
	set := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: blocks.ArtifactTypeBlockSet,
		Config:       emptyJSON,
		Layers:       layers,
		Annotations:  map[string]string{blocks.AnnotationBlockSetOf: d.blocked.Digest.String()},
	}
	if d.blockSet, err = json.Marshal(set); err != nil {
		return nil, err
	}
	d.setDesc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(d.blockSet), Size: int64(len(d.blockSet))}
	return d, nil
}

// emptyJSON is the config of every block set (the OCI empty descriptor
// without its inline data, as export writes it).
var emptyJSON = ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: ocispec.DescriptorEmptyJSON.Size}

// scanStandard reads the standard layer from r, copying it to spool, and
// walks its gzip members: each block is a header member (its raw tar header
// stored as docs/FORMAT.md section 3 says) followed by the block's member;
// every other member is verbatim. It returns the blocks, each with the
// verbatim bytes before it, and the verbatim bytes after the last
// (offset, length).
func scanStandard(ctx context.Context, r io.Reader, spool *os.File) ([]derivedBlock, [2]int64, error) {
	var tail [2]int64
	cr := &countingReader{r: io.TeeReader(r, spool)}
	br := bufio.NewReaderSize(cr, 1<<20)
	pos := func() int64 { return cr.n - int64(br.Buffered()) }
	zr := new(kgzip.Reader)
	var (
		out     []derivedBlock
		headers int64
		verbOff int64 // start of the verbatim bytes since the last block
		pending *derivedBlock
		buf     = make([]byte, layer.MaxStubHeader+1)
		hdrOff  int64
	)
	for {
		if err := ctx.Err(); err != nil {
			return nil, tail, err
		}
		if _, err := br.Peek(1); err == io.EOF {
			break
		} else if err != nil {
			return nil, tail, err
		}
		start := pos()
		if err := zr.Reset(br); err != nil {
			return nil, tail, fmt.Errorf("%w: member at offset %d: %v", errNotBlockFramed, start, err)
		}
		zr.Multistream(false)
		if pending != nil {
			// The block's member: its bytes, then zero padding to 512.
			h := sha256.New()
			n, err := io.CopyN(h, zr, pending.raw.Size)
			if err != nil {
				return nil, tail, fmt.Errorf("%w: block %q: member at offset %d holds %d of %d bytes: %v", errNotBlockFramed, pending.name, start, n, pending.raw.Size, err)
			}
			pad := (512 - pending.raw.Size%512) % 512
			k, err := io.ReadFull(zr, buf[:pad+1])
			if err != io.ErrUnexpectedEOF && err != io.EOF || int64(k) != pad || !zeros(buf[:k]) {
				return nil, tail, fmt.Errorf("%w: block %q: member at offset %d does not end with its padding", errNotBlockFramed, pending.name, start)
			}
			pending.raw.Digest = digest.NewDigest(digest.SHA256, h)
			pending.off, pending.n = start, pos()-start
			out = append(out, *pending)
			pending = nil
			verbOff = pos()
			continue
		}
		k, err := io.ReadFull(zr, buf)
		switch {
		case err == io.ErrUnexpectedEOF || err == io.EOF:
			// The whole member is in buf: it may be a header member.
			if b, ok := headerMember(buf[:k], spool, start, pos()-start); ok {
				if len(out) >= maxDerivedBlocks || headers+int64(k) > maxDerivedHeaders {
					return nil, tail, fmt.Errorf("standard layer: more than %d blocks or %d bytes of their headers: %w", maxDerivedBlocks, int64(maxDerivedHeaders), ErrBound)
				}
				headers += int64(k)
				b.verbOff, b.verbN = verbOff, start-verbOff
				hdrOff = start
				pending = &b
				continue
			}
		case err != nil:
			return nil, tail, fmt.Errorf("%w: member at offset %d: %v", errNotBlockFramed, start, err)
		default:
			if _, err := io.Copy(io.Discard, zr); err != nil {
				return nil, tail, fmt.Errorf("%w: member at offset %d: %v", errNotBlockFramed, start, err)
			}
		}
	}
	if pending != nil {
		return nil, tail, fmt.Errorf("%w: header member at offset %d without its block", errNotBlockFramed, hdrOff)
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, tail, err
	}
	tail = [2]int64{verbOff, pos() - verbOff}
	return out, tail, nil
}

// headerMember reports whether the member of n bytes at off in spool, which
// decompresses to raw, is the header member of a block: raw is exactly the
// header records of one regular file of positive size whose stub can be
// written, stored byte for byte as section 3 of docs/FORMAT.md says.
func headerMember(raw []byte, spool *os.File, off, n int64) (derivedBlock, bool) {
	if len(raw) == 0 || len(raw)%512 != 0 || n != layer.HeaderMemberSize(blocks.Gzip, len(raw)) {
		return derivedBlock{}, false
	}
	th, err := tar.NewReader(bytes.NewReader(raw)).Next()
	if err != nil || th.Size <= 0 {
		return derivedBlock{}, false
	}
	h, err := layer.ParseStubHeader(raw, th.Size)
	if err != nil {
		return derivedBlock{}, false
	}
	got := make([]byte, n)
	if _, err := spool.ReadAt(got, off); err != nil || !bytes.Equal(got, layer.AppendHeaderMember(nil, blocks.Gzip, raw)) {
		return derivedBlock{}, false
	}
	return derivedBlock{name: h.Name, hrec: bytes.Clone(raw), raw: blocks.Ref{Size: h.Size}}, true
}

func zeros(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// stubEntry is the stub entry of the block at name (docs/FORMAT.md section
// 5), as Split writes it: the stub document in a regular file named
// dir/.import.base, mode 0644, mtime 0, padded to 512.
func stubEntry(name string, s blocks.Stub) ([]byte, error) {
	sn, err := layer.StubName(name)
	if err != nil {
		return nil, err
	}
	doc, err := layer.EncodeStub(s)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: sn, Mode: 0o644, Size: int64(len(doc)), ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(doc); err != nil {
		return nil, err
	}
	if err := tw.Flush(); err != nil { // pads to 512; Close would end the archive
		return nil, err
	}
	return buf.Bytes(), nil
}

// derive reads the standard layer b from rd (verified against its digest),
// derives its blocked form, checks it against b.Derive and adds the blocked
// layer, the block set, its config and the members the store lacks to the
// batch. It runs in apply's check pass, beside the rebuilds.
func (r *rebuilder) derive(b Blob, rd io.Reader) error {
	ctx := r.ctx
	w, err := r.s.NewWriter(ctx)
	if err != nil {
		return err
	}
	d, err := deriveBlocked(ctx, store.VerifyReader(rd, b.Descriptor()), r.s.TempDir(), b.MediaType, w)
	if err != nil {
		w.Close()
		return fmt.Errorf("bundle %s: standard layer %s: %w", r.path, b.Digest, err)
	}
	defer d.close()
	if d.blocked.Digest != b.Derive.Blocked.Digest || d.blocked.Size != b.Derive.Blocked.Size ||
		d.setDesc.Digest != b.Derive.BlockSet.Digest || d.setDesc.Size != b.Derive.BlockSet.Size {
		w.Close()
		return fmt.Errorf("bundle %s: standard layer %s gives blocked layer %s (%d bytes) and block set %s (%d bytes); the header says %s (%d bytes) and %s (%d bytes)",
			r.path, b.Digest, d.blocked.Digest, d.blocked.Size, d.setDesc.Digest, d.setDesc.Size,
			b.Derive.Blocked.Digest, b.Derive.Blocked.Size, b.Derive.BlockSet.Digest, b.Derive.BlockSet.Size)
	}
	if err := r.add(w, d.blocked); err != nil {
		return err
	}
	put := func(desc ocispec.Descriptor, src io.Reader) error {
		r.mu.Lock()
		done := r.done[desc.Digest]
		r.mu.Unlock()
		if done {
			return nil
		}
		if size, ok, err := blobSize(ctx, r.s, desc.Digest); err != nil || ok && size == desc.Size {
			return err
		}
		w, err := r.s.NewWriter(ctx)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, src); err != nil {
			w.Close()
			return fmt.Errorf("bundle %s: standard layer %s: %w", r.path, b.Digest, err)
		}
		return r.add(w, desc)
	}
	if err := put(d.setDesc, bytes.NewReader(d.blockSet)); err != nil {
		return err
	}
	if err := put(emptyJSON, bytes.NewReader([]byte("{}"))); err != nil {
		return err
	}
	for _, m := range d.members {
		if err := put(m.desc, d.member(m)); err != nil {
			return err
		}
	}
	return nil
}

// add adds w, holding desc, to the batch and counts it as derived.
func (r *rebuilder) add(w *store.BlobWriter, desc ocispec.Descriptor) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.batch.Add(r.ctx, w, desc); err != nil {
		return fmt.Errorf("bundle %s: derived blob %s: %w", r.path, desc.Digest, err)
	}
	r.done[desc.Digest] = true
	r.derived.Blobs++
	r.derived.Bytes += desc.Size
	return nil
}
