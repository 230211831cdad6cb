package layer

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
)

// PartKind says where a byte range of a standard layer comes from.
type PartKind uint8

const (
	// PartVerbatim is a run of verbatim members: the same bytes in the
	// blocked layer (at BlockedOffset) and in the standard layer.
	PartVerbatim PartKind = iota
	// PartHeader is a header member (m_hdr), rebuilt from a stub's H.
	PartHeader
	// PartMember is a block member (m_data), named by Member.
	PartMember
)

// Part is one byte range of the standard layer a blocked layer hydrates to.
type Part struct {
	Kind PartKind
	// Offset and Size place the part in the standard layer.
	Offset, Size int64
	// BlockedOffset is where a verbatim part starts in the blocked layer.
	BlockedOffset int64
	// Member is the block member of a PartMember (its digest; its size is
	// Size), and the member that follows a PartHeader.
	Member digest.Digest
	// Block is the raw block the stub of a PartHeader or PartMember names,
	// so a caller can check the block set's annotation as Hydrate does.
	Block digest.Digest
	// Header is a PartHeader's raw tar header records H, from which
	// WriteHeaderMember rebuilds it.
	Header []byte
}

// Bounds of what Layout holds for one layer: the parts (two per stub and
// the verbatim runs between them) and the header records of the stubs. A
// blocked layer beyond them is refused (ErrTooLarge); a caller then reads
// the members one by one and hydrates as usual.
const (
	MaxLayoutParts   = 1 << 20
	MaxLayoutHeaders = 64 << 20
)

// ErrTooLarge: a blocked layer has more stubs, or larger headers, than
// Layout holds in memory.
var ErrTooLarge = errors.New("blocked layer too large to lay out in memory")

// Layout walks a blocked layer of media type mediaType (the standard
// layer's) with the checks of Hydrate (framing, entry names, stub
// documents) and lists, in order, the parts of the standard layer it
// hydrates to: by docs/FORMAT.md section 5 that layer is the blocked layer's
// verbatim members with each stub replaced by its header member and its
// block member, so the offset of every block member inside the standard
// layer follows from the blocked layer alone. It returns the layer's
// compression and the parts; their sizes add up to the standard layer's size
// if the blocked layer is the right one (the caller checks against the
// standard descriptor, and the content of every part against its digests).
// Memory holds the parts and the stubs' header records (no stub document),
// within MaxLayoutParts and MaxLayoutHeaders.
func Layout(ctx context.Context, blocked io.Reader, mediaType string) (blocks.Compression, []Part, error) {
	lw := &layoutWriter{}
	cr := &countReader{r: blocked}
	var comp blocks.Compression
	lastStubMember := int64(-1)
	err := walk(ctx, cr, mediaType, lw, func(c blocks.Compression, e StubEntry) error {
		comp = c
		if e.Offset != lastStubMember {
			// A new stub member starts at e.Offset: the verbatim run
			// before it, if any, ends there.
			lastStubMember = e.Offset
			lw.endVerbatim(e.Offset)
		}
		lw.verbatimOpen = false
		if lw.headers += int64(len(e.Stub.Header)); lw.headers > MaxLayoutHeaders {
			return fmt.Errorf("stub headers of more than %d bytes: %w", MaxLayoutHeaders, ErrTooLarge)
		}
		hs := HeaderMemberSize(c, len(e.Stub.Header))
		if err := lw.add(Part{Kind: PartHeader, Offset: lw.off, Size: hs, Member: e.Stub.Member.Digest, Block: e.Stub.Block.Digest, Header: e.Stub.Header}); err != nil {
			return err
		}
		return lw.add(Part{Kind: PartMember, Offset: lw.off, Size: e.Stub.Member.Size, Member: e.Stub.Member.Digest, Block: e.Stub.Block.Digest})
	})
	if err != nil {
		return "", nil, err
	}
	if lw.err != nil {
		return "", nil, lw.err
	}
	lw.endVerbatim(cr.n)
	if comp == "" {
		// No stub: the compression is that of the first bytes, which walk
		// checked against the media type.
		comp = blocks.Gzip
		if lw.sniffed == blocks.Zstd {
			comp = blocks.Zstd
		}
	}
	return comp, lw.parts, nil
}

// layoutWriter receives the verbatim bytes of walk (in layer order, each
// member's bytes before the stubs of the next) and counts them into parts.
type layoutWriter struct {
	parts        []Part
	off          int64 // standard layer offset reached
	verbatimOpen bool  // the last part is a verbatim run still growing
	runStart     int   // index of the open verbatim part
	headers      int64 // bytes of header records held
	sniffed      blocks.Compression
	err          error
}

func (w *layoutWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.sniffed == "" {
		if c, ok := sniff(p); ok {
			w.sniffed = c
		}
	}
	if !w.verbatimOpen {
		if err := w.add(Part{Kind: PartVerbatim, Offset: w.off, BlockedOffset: -1}); err != nil {
			w.err = err
			return 0, err
		}
		w.verbatimOpen = true
		w.runStart = len(w.parts) - 1
	}
	w.parts[len(w.parts)-1].Size += int64(len(p))
	w.off += int64(len(p))
	return len(p), nil
}

// endVerbatim closes the open verbatim run, which ends at blocked layer
// offset end.
func (w *layoutWriter) endVerbatim(end int64) {
	if !w.verbatimOpen {
		return
	}
	p := &w.parts[w.runStart]
	p.BlockedOffset = end - p.Size
	w.verbatimOpen = false
}

func (w *layoutWriter) add(p Part) error {
	if len(w.parts) >= MaxLayoutParts {
		return fmt.Errorf("more than %d parts: %w", MaxLayoutParts, ErrTooLarge)
	}
	w.parts = append(w.parts, p)
	w.off += p.Size
	return nil
}
