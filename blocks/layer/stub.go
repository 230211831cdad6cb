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

// EncodeStub returns the stub document: blocks.StubMagic, the JSON of s, "\n".
func EncodeStub(s blocks.Stub) ([]byte, error) {
	if err := validateStub(s); err != nil {
		return nil, err
	}
	j, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode stub: %w", err)
	}
	b := make([]byte, 0, len(blocks.StubMagic)+len(j)+1)
	b = append(b, blocks.StubMagic...)
	b = append(b, j...)
	return append(b, '\n'), nil
}

// ParseStub parses and validates a stub document. It does not look at the
// header records beyond their length; see ParseStubHeader.
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
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return blocks.Stub{}, fmt.Errorf("stub JSON: %v: %w", err, ErrBadStub)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return blocks.Stub{}, fmt.Errorf("stub JSON: data after the object: %w", ErrBadStub)
	}
	if err := validateStub(s); err != nil {
		return blocks.Stub{}, err
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
// built on it read (and count) everything they skip.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
