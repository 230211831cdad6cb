package layer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// MemberForm is one of the ways Split deflates a gzip member (docs/FORMAT.md
// section 2), so that a member can be rebuilt from its uncompressed bytes:
// bundles ship a changed member of a blocked layer as its uncompressed
// content (which patches well against the previous version) and the target
// deflates it again, checking the result against the layer's digest.
type MemberForm byte

const (
	// FormPieces: 1 MiB pieces, each deflated at level 6 with the 32 KiB
	// before it as dictionary and ended by a sync flush, the last (holding
	// the rest, empty only for an empty member) by the final block: block
	// members, and verbatim members whose size is not a multiple of 1 MiB.
	FormPieces MemberForm = iota
	// FormPiecesEmptyLast: the same, then an empty last piece: verbatim
	// members whose size is a multiple of 1 MiB.
	FormPiecesEmptyLast
	// FormOneStream: compress/gzip at level 6 in one stream: stub members
	// (identical to FormPieces up to 1 MiB).
	FormOneStream
	numForms
)

// Valid reports whether f is a known form.
func (f MemberForm) Valid() bool { return f < numForms }

// GzipMember writes to w the gzip member of raw in form f, byte for byte as
// Split writes it.
func GzipMember(w io.Writer, raw []byte, f MemberForm) error {
	switch f {
	case FormOneStream:
		zw, err := newGzipStream()
		if err != nil {
			return err
		}
		zw.Reset(w)
		if _, err := zw.Write(raw); err != nil {
			return err
		}
		return zw.Close()
	case FormPieces, FormPiecesEmptyLast:
	default:
		return fmt.Errorf("gzip member form %d: %w", f, ErrMalformed)
	}
	if _, err := w.Write(gzipFixedHeader[:]); err != nil {
		return err
	}
	var dict []byte
	// Each piece is deflated by the code Split's deflaters run (chunkTask),
	// here one after the other.
	piece := func(data []byte, last bool) error {
		t := &chunkTask{dict: dict, data: data, last: last, done: make(chan struct{})}
		t.run(nil)
		if t.err != nil {
			return t.err
		}
		_, err := w.Write(t.out.Bytes())
		return err
	}
	rest := raw
	for {
		n := min(len(rest), gzipChunk)
		last := n == len(rest) && f == FormPieces
		if err := piece(rest[:n], last); err != nil {
			return err
		}
		dict = nextDict(dict, rest[:n])
		rest = rest[n:]
		if last {
			break
		}
		if len(rest) == 0 {
			// FormPiecesEmptyLast
			if err := piece(nil, true); err != nil {
				return err
			}
			break
		}
	}
	var tr [8]byte
	binary.LittleEndian.PutUint32(tr[0:4], crc32.ChecksumIEEE(raw))
	binary.LittleEndian.PutUint32(tr[4:8], uint32(len(raw)))
	_, err := w.Write(tr[:])
	return err
}
