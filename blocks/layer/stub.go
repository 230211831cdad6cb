package layer

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
)

// Limits on what a stub may hold. They bound what Hydrate buffers for one stub
// member; a real stub is a few hundred bytes.
const (
	// MaxStubHeader is the largest raw header that a stub may carry: Go's
	// tar reader caps PAX and GNU long-name records at 1 MiB, plus headers.
	MaxStubHeader = 2 << 20
	// MaxStubSize is the largest stub document (magic, JSON, newline).
	MaxStubSize = len(blocks.StubMagic) + 4*MaxStubHeader/3 + 4096
)

// StubName returns the name of the stub entry that stands for the block at
// name: everything up to and including the last "/" of name, then
// blocks.StubPrefix, then the rest. "app/libs/a.jar" -> "app/libs/.import.a.jar".
func StubName(name string) (string, error) {
	dir, base := path.Split(name)
	if base == "" {
		return "", fmt.Errorf("stub name for %q: no base name: %w", name, ErrBadStub)
	}
	return dir + blocks.StubPrefix + base, nil
}

// IsStubName reports whether name's base starts with blocks.StubPrefix.
func IsStubName(name string) bool {
	_, base := path.Split(name)
	return strings.HasPrefix(base, blocks.StubPrefix)
}

// stubDoc is the JSON of a stub document. Its keys are one letter: a stub is
// re-shipped whenever its layer changes, and the digests and the header are
// all that need to travel. blocks.Stub is the same content for Go callers.
type stubDoc struct {
	B stubRef `json:"b"` // the raw block
	M stubRef `json:"m"` // the block member
	H []byte  `json:"h"` // the raw header records, standard base64
}

type stubRef struct {
	D digest.Digest `json:"d"`
	S int64         `json:"s"`
}

// EncodeStub returns the stub document: blocks.StubMagic, the JSON of s with
// one-letter keys ({"b":{"d":..,"s":..},"m":{"d":..,"s":..},"h":".."}), "\n".
// The encoding is canonical: ParseStub accepts only what EncodeStub writes.
func EncodeStub(s blocks.Stub) ([]byte, error) {
	if err := validateStub(s); err != nil {
		return nil, err
	}
	j, err := json.Marshal(stubDoc{B: stubRef{s.Block.Digest, s.Block.Size}, M: stubRef{s.Member.Digest, s.Member.Size}, H: s.Header})
	if err != nil {
		return nil, fmt.Errorf("encode stub: %w", err)
	}
	b := make([]byte, 0, len(blocks.StubMagic)+len(j)+1)
	b = append(b, blocks.StubMagic...)
	b = append(b, j...)
	return append(b, '\n'), nil
}

// ParseStub parses and validates a stub document. It does not look at the
// header records beyond their length; see ParseStubHeader. Only the
// canonical encoding (EncodeStub's) is accepted: no whitespace, no other key
// spelling or order, no duplicate keys.
func ParseStub(b []byte) (blocks.Stub, error) {
	var s blocks.Stub
	if len(b) > MaxStubSize {
		return s, fmt.Errorf("stub of %d bytes exceeds %d: %w", len(b), MaxStubSize, ErrBadStub)
	}
	rest, ok := bytes.CutPrefix(b, []byte(blocks.StubMagic))
	if !ok {
		return s, fmt.Errorf("stub does not start with %q: %w", strings.TrimSpace(blocks.StubMagic), ErrBadStub)
	}
	body, ok := bytes.CutSuffix(rest, []byte("\n"))
	if !ok {
		return s, fmt.Errorf("stub does not end with a newline (truncated?): %w", ErrBadStub)
	}
	var d stubDoc
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return s, fmt.Errorf("stub JSON: %v: %w", err, ErrBadStub)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return s, fmt.Errorf("stub JSON: data after the object: %w", ErrBadStub)
	}
	s = blocks.Stub{Block: blocks.Ref{Digest: d.B.D, Size: d.B.S}, Member: blocks.Ref{Digest: d.M.D, Size: d.M.S}, Header: d.H}
	if err := validateStub(s); err != nil {
		return blocks.Stub{}, err
	}
	// encoding/json matches keys case-insensitively and takes the last of
	// duplicates: comparing with the canonical encoding leaves one reading.
	if canon, err := EncodeStub(s); err != nil || !bytes.Equal(canon, b) {
		return blocks.Stub{}, fmt.Errorf("stub JSON is not in canonical form: %w", ErrBadStub)
	}
	return s, nil
}

func validateStub(s blocks.Stub) error {
	if err := validateRef("block", s.Block); err != nil {
		return err
	}
	if err := validateRef("member", s.Member); err != nil {
		return err
	}
	if n := len(s.Header); n == 0 || n%512 != 0 || n > MaxStubHeader {
		return fmt.Errorf("stub header of %d bytes: want a non-zero multiple of 512 up to %d: %w", n, MaxStubHeader, ErrBadStub)
	}
	return nil
}

func validateRef(what string, r blocks.Ref) error {
	if err := r.Digest.Validate(); err != nil {
		return fmt.Errorf("stub %s digest %q: %v: %w", what, r.Digest, err, ErrBadStub)
	}
	if r.Digest.Algorithm() != digest.SHA256 {
		return fmt.Errorf("stub %s digest %q: not sha256: %w", what, r.Digest, ErrBadStub)
	}
	if r.Size <= 0 {
		return fmt.Errorf("stub %s size %d: must be positive: %w", what, r.Size, ErrBadStub)
	}
	return nil
}

// ParseStubHeader parses the raw header record(s) that a stub carries with
// Go's archive/tar and checks that they are exactly the headers of one
// regular, non-sparse file of size bytes, with nothing after them.
func ParseStubHeader(raw []byte, size int64) (*tar.Header, error) {
	cr := &countReader{r: bytes.NewReader(raw)}
	h, err := tar.NewReader(cr).Next()
	if err != nil {
		return nil, fmt.Errorf("stub header: %v: %w", err, ErrBadStub)
	}
	if cr.n != int64(len(raw)) {
		return nil, fmt.Errorf("stub header %q: %d bytes after the header records: %w", h.Name, int64(len(raw))-cr.n, ErrBadStub)
	}
	if h.Typeflag != tar.TypeReg || isSparse(h.Typeflag, h.PAXRecords) {
		return nil, fmt.Errorf("stub header %q: typeflag %q is not a regular file: %w", h.Name, h.Typeflag, ErrBadStub)
	}
	if h.Size != size {
		return nil, fmt.Errorf("stub header %q: size %d does not match block size %d: %w", h.Name, h.Size, size, ErrBadStub)
	}
	return h, nil
}

func isSparse(typeflag byte, pax map[string]string) bool {
	if typeflag == 'S' {
		return true
	}
	for k := range pax {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// stubEntry returns the tar bytes of the stub entry for the block at name:
// one regular file named StubName(name), mode 0644, uid/gid 0, mtime 0,
// content the stub document, padded to 512. archive/tar picks USTAR, or PAX
// (or GNU) when the name needs it. There is no end-of-archive marker.
func stubEntry(name string, s blocks.Stub) ([]byte, error) {
	sn, err := StubName(name)
	if err != nil {
		return nil, err
	}
	return stubEntryNamed(sn, s)
}

// stubEntryNamed is stubEntry with the stub entry's name given.
func stubEntryNamed(sn string, s blocks.Stub) ([]byte, error) {
	doc, err := EncodeStub(s)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err = tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     sn,
		Mode:     0o644,
		Size:     int64(len(doc)),
		ModTime:  time.Unix(0, 0),
	})
	if err != nil {
		return nil, fmt.Errorf("stub entry %q: %w", sn, err)
	}
	if _, err := tw.Write(doc); err != nil {
		return nil, fmt.Errorf("stub entry %q: %w", sn, err)
	}
	if err := tw.Flush(); err != nil { // pads to 512; Close would add end-of-archive
		return nil, fmt.Errorf("stub entry %q: %w", sn, err)
	}
	return buf.Bytes(), nil
}

// countReader counts bytes read; it hides any Seek method so that readers
// built on it read (and count) everything they skip. Bytes read at offsets in
// [zeroFrom, zeroTo) must be zero, else nonZero is set: the tar reader skips
// padding without looking at it.
type countReader struct {
	r                io.Reader
	n                int64
	zeroFrom, zeroTo int64
	nonZero          bool
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.zeroTo > c.n && c.zeroFrom < c.n+int64(n) {
		lo, hi := max(c.zeroFrom-c.n, 0), min(c.zeroTo-c.n, int64(n))
		if !allZero(p[lo:hi]) {
			c.nonZero = true
		}
	}
	c.n += int64(n)
	return n, err
}
