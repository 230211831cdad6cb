package bundle

import (
	"bufio"
	"bytes"
	stdgzip "compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/blockfile/blockfile/blocks/layer"
)

// Member patches. A zstd-dict patch works on compressed bytes: a member of
// a blocked layer that changed at all (a file's new content, or only a new
// mtime in its tar header, which a package upgrade gives every file it
// ships) travels whole, compressed. A gzip-members patch works on the
// uncompressed side instead: the new blocked layer is described member by
// member, as a copy of a member of the base, or as the member's
// uncompressed bytes plus how Split deflated them (layer.MemberForm), or,
// when no form rebuilds it, as its compressed bytes. That description is
// compressed by zstd with the base's uncompressed members as dictionary, so
// an unchanged file costs nothing and a changed header a few bytes. The
// target deflates the described members again (layer.GzipMember) and checks
// the whole blob against its digest, as for every patch. On the scenario's
// JRE upgrade the blocked layer (2.2 MB) travels in 30 KB, where a
// zstd-dict patch of its compressed bytes takes 318 KB.
//
// The description, inside the zstd frame, is a sequence of records:
//
//	'C' uvarint(i)                      member i of the base, copied
//	'D' form(1) uvarint(n) n bytes      these uncompressed bytes, deflated in form
//	'L' uvarint(n) n bytes              these compressed bytes, as they are
const PatchZstdGzipMembers = "zstd-gzip-members"

// Limits of member patches: the base's uncompressed members are the
// dictionary (held in memory), and one 'D' record is deflated from memory.
const (
	maxMemberDict   = 64 << 20
	maxMemberRecord = 16 << 20
)

// Bounds of the deflate work a member patch asks for (docs/FORMAT.md
// section 9). A 'D' record's bytes must deflate to at least one byte per
// maxDeflateRatio of them (plus deflateSlack): a member that compresses
// better is cheap to ship as it is ('L'), and without the bound a few
// kilobytes of zstd could ask for gigabytes of zeros to be deflated. All
// the 'D' records of one blob hold at most maxMemberDict bytes, as made.
const (
	maxDeflateRatio = 32
	deflateSlack    = 1024
)

// MaxDeflatedBytes bounds the uncompressed bytes that one bundle asks apply
// to deflate: the 'D' records of its member patches and the blocks of its
// block deltas together (apply rebuilds each patched blob once). Apply
// refuses a header whose deltas alone declare more, and stops a member patch
// that would pass it while decoding. Create stops making member patches and
// deltas before it (the blob then travels as a zstd-dict patch, which costs
// no deflate, or whole). A delta is at most maxDeltaRaw bytes and its
// decoding work is proportional to its output, so the deflate budget bounds
// the work of a bundle's deltas too.
const MaxDeflatedBytes = 1 << 30

// deflateBudget counts the bytes deflated for member patches and block
// deltas in one apply (or planned by one create), against MaxDeflatedBytes.
type deflateBudget struct {
	used atomic.Int64
	max  int64
}

func newDeflateBudget() *deflateBudget { return &deflateBudget{max: MaxDeflatedBytes} }

// take reserves n bytes of deflate work.
func (d *deflateBudget) take(n int64) error {
	if d == nil {
		return nil
	}
	if used := d.used.Add(n); used > d.max {
		return fmt.Errorf("member patches ask for more than %d bytes to be deflated in one bundle: %w", d.max, ErrBound)
	}
	return nil
}

// fits reports whether n more bytes of deflate work stay within the budget.
func (d *deflateBudget) fits(n int64) bool { return d.used.Load()+n <= d.max }

// deflateWithinBound reports whether n uncompressed bytes that deflate to c
// bytes may travel as a 'D' record.
func deflateWithinBound(n, c int) bool { return n <= maxDeflateRatio*c+deflateSlack }

// gzipSpan is one gzip member of a blob.
type gzipSpan struct {
	off, n int64
	raw    []byte
}

// gzipSpans cuts data into its gzip members; it fails on anything else
// (trailing bytes, a zstd layer) or past maxRaw uncompressed bytes.
func gzipSpans(data []byte, maxRaw int64) ([]gzipSpan, error) {
	r := bytes.NewReader(data)
	var out []gzipSpan
	var total int64
	for r.Len() > 0 {
		off := r.Size() - int64(r.Len())
		zr, err := stdgzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip member at offset %d: %w", off, err)
		}
		zr.Multistream(false)
		raw, err := io.ReadAll(io.LimitReader(zr, maxRaw-total+1))
		if err != nil {
			return nil, fmt.Errorf("gzip member at offset %d: %w", off, err)
		}
		if total += int64(len(raw)); total > maxRaw {
			return nil, fmt.Errorf("more than %d bytes uncompressed", maxRaw)
		}
		out = append(out, gzipSpan{off: off, n: r.Size() - int64(r.Len()) - off, raw: raw})
	}
	return out, nil
}

// memberDict is the dictionary of a member patch: the base's members,
// uncompressed, one after the other.
func memberDict(spans []gzipSpan) []byte {
	var n int
	for _, s := range spans {
		n += len(s.raw)
	}
	d := make([]byte, 0, n)
	for _, s := range spans {
		d = append(d, s.raw...)
	}
	return d
}

// makeMemberPatch writes to w the gzip-members patch of blob against base
// (both gzip member sequences, in memory within the patch limits). It
// returns errNoMemberPatch when the blobs are not such sequences or are too
// large.
func makeMemberPatch(w io.Writer, blob, base []byte, tmpDir string, budget *deflateBudget) error {
	bs, err := gzipSpans(base, maxMemberDict)
	if err != nil {
		return fmt.Errorf("%w: base: %v", errNoMemberPatch, err)
	}
	ns, err := gzipSpans(blob, maxMemberDict)
	if err != nil {
		return fmt.Errorf("%w: %v", errNoMemberPatch, err)
	}
	index := map[[32]byte]int{}
	for i, s := range bs {
		k := sha256.Sum256(base[s.off : s.off+s.n])
		if _, ok := index[k]; !ok {
			index[k] = i
		}
	}
	// The description goes to a temp file first: the zstd window must
	// cover the dictionary and all of it, so its size is needed up front.
	f, err := os.CreateTemp(tmpDir, "members-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	bw := bufio.NewWriter(f)
	var rebuilt bytes.Buffer
	for _, s := range ns {
		c := blob[s.off : s.off+s.n]
		if i, ok := index[sha256.Sum256(c)]; ok {
			bw.WriteByte('C')
			bw.Write(binary.AppendUvarint(nil, uint64(i)))
			continue
		}
		form, ok := layer.MemberForm(0), false
		if len(s.raw) <= maxMemberRecord {
			for f := layer.MemberForm(0); f.Valid() && !ok; f++ {
				rebuilt.Reset()
				if err := layer.GzipMember(&rebuilt, s.raw, f); err != nil {
					return err
				}
				form, ok = f, bytes.Equal(rebuilt.Bytes(), c)
			}
		}
		if ok && deflateWithinBound(len(s.raw), len(c)) {
			if err := budget.take(int64(len(s.raw))); err != nil {
				return fmt.Errorf("%w: %v", errNoMemberPatch, err)
			}
			bw.WriteByte('D')
			bw.WriteByte(byte(form))
			bw.Write(binary.AppendUvarint(nil, uint64(len(s.raw))))
			bw.Write(s.raw)
		} else {
			bw.WriteByte('L')
			bw.Write(binary.AppendUvarint(nil, uint64(len(c))))
			bw.Write(c)
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	dict := memberDict(bs)
	if int64(len(dict))+size > maxPatchWindow/2 {
		return fmt.Errorf("%w: %d bytes to describe against %d", errNoMemberPatch, size, len(dict))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return makePatch(w, f, size, dict)
}

var errNoMemberPatch = errors.New("no member patch")

// unpatchMembers returns a reader of blob b rebuilt from its gzip-members
// patch (read from r) and its base (compressed, in memory). At most
// b.Size+1 bytes come out; callers verify digest and size.
func unpatchMembers(r io.Reader, b Blob, base []byte, budget *deflateBudget) (io.Reader, func(), error) {
	spans, err := gzipSpans(base, maxMemberDict)
	if err != nil {
		return nil, nil, fmt.Errorf("blob %s: patch base %s: %w", b.Digest, b.Patch.Base.Digest, err)
	}
	dec, err := dictDecoder(r, b, memberDict(spans))
	if err != nil {
		return nil, nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		err := rebuildMembers(pw, bufio.NewReader(dec), spans, base, b.Size, budget)
		dec.Close()
		pw.CloseWithError(err)
	}()
	stop := func() { pr.CloseWithError(errors.New("stopped")) }
	return &patchErr{r: io.LimitReader(pr, b.Size+1), b: b}, stop, nil
}

// rebuildMembers writes the blob a member description stands for.
func rebuildMembers(w io.Writer, r *bufio.Reader, spans []gzipSpan, base []byte, size int64, budget *deflateBudget) error {
	cw := &countingWriter{w: w}
	var deflated int64 // uncompressed bytes of the 'D' records so far
	for record := 0; ; record++ {
		op, err := r.ReadByte()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if cw.n > size {
			return fmt.Errorf("member patch: longer than %d bytes", size)
		}
		switch op {
		case 'C':
			i, err := binary.ReadUvarint(r)
			if err != nil || i >= uint64(len(spans)) {
				return fmt.Errorf("member patch: bad copy record (member %d of %d): %v", i, len(spans), err)
			}
			s := spans[i]
			if _, err := cw.Write(base[s.off : s.off+s.n]); err != nil {
				return err
			}
		case 'D':
			form, err := r.ReadByte()
			if err != nil {
				return err
			}
			n, err := binary.ReadUvarint(r)
			if err != nil || n > maxMemberRecord || !layer.MemberForm(form).Valid() {
				return fmt.Errorf("member patch: bad deflate record (form %d, %d bytes): %v", form, n, err)
			}
			if deflated += int64(n); deflated > maxMemberDict {
				return fmt.Errorf("member patch: record %d: more than %d uncompressed bytes to deflate in one blob: %w", record, maxMemberDict, ErrBound)
			}
			if err := budget.take(int64(n)); err != nil {
				return fmt.Errorf("member patch: record %d: %w", record, err)
			}
			raw := make([]byte, n)
			if _, err := io.ReadFull(r, raw); err != nil {
				return fmt.Errorf("member patch: %w", err)
			}
			before := cw.n
			if err := layer.GzipMember(cw, raw, layer.MemberForm(form)); err != nil {
				return err
			}
			if c := cw.n - before; !deflateWithinBound(int(n), int(c)) {
				return fmt.Errorf("member patch: record %d: %d bytes deflate to %d, more than %d per byte (+%d): %w", record, n, c, maxDeflateRatio, deflateSlack, ErrBound)
			}
		case 'L':
			n, err := binary.ReadUvarint(r)
			if err != nil || n > uint64(size) {
				return fmt.Errorf("member patch: bad literal record (%d bytes): %v", n, err)
			}
			if _, err := io.CopyN(cw, r, int64(n)); err != nil {
				return fmt.Errorf("member patch: %w", err)
			}
		default:
			return fmt.Errorf("member patch: unknown record %q", op)
		}
	}
}
