package bundle

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// Reader reads a bundle file front to back: the header at Open, then each
// blob, checked against the header's list, through Next.
type Reader struct {
	// Header is the bundle's blockfile-bundle.json, checked for consistency.
	Header *Header

	path string
	f    *os.File
	cr   *countingReader
	tr   *tar.Reader
	next int   // index in Header.Blobs of the next blob
	end  int64 // offset just past the data (and padding) of the last entry
}

// Open opens a bundle, reads and checks its header, oci-layout and
// index.json, and stops before the first blob.
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	// The counting reader also hides the file's Seek from the tar reader,
	// so the bytes of every entry are really read (and a truncated file
	// is noticed where it ends).
	cr := &countingReader{r: f}
	r := &Reader{path: path, f: f, cr: cr, tr: tar.NewReader(cr)}
	if err := r.start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	return r, nil
}

// ReadHeader returns the checked header of the bundle at path.
func ReadHeader(path string) (*Header, error) {
	r, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Header, nil
}

// Close closes the file.
func (r *Reader) Close() error { return r.f.Close() }

func (r *Reader) entry(want string, limit int64) ([]byte, error) {
	th, err := r.tr.Next()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", want, noEOF(err))
	}
	if th.Name != want || th.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("entry %q where %s was expected: not a blockfile bundle, or damaged", th.Name, want)
	}
	if th.Size > limit {
		return nil, fmt.Errorf("%s: %d bytes, limit %d: %w", want, th.Size, limit, ErrBound)
	}
	data, err := io.ReadAll(r.tr)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", want, noEOF(err))
	}
	r.end = r.cr.n + (512-th.Size%512)%512
	return data, nil
}

func (r *Reader) start() error {
	data, err := r.entry(HeaderName, maxHeaderSize)
	if err != nil {
		return err
	}
	var h Header
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("%s: %w", HeaderName, err)
	}
	if err := h.check(); err != nil {
		return fmt.Errorf("%s: %w", HeaderName, err)
	}
	r.Header = &h

	data, err = r.entry(ocispec.ImageLayoutFile, 4096)
	if err != nil {
		return err
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(data, &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		return fmt.Errorf("%s: want imageLayoutVersion %s", ocispec.ImageLayoutFile, ocispec.ImageLayoutVersion)
	}
	data, err = r.entry("index.json", maxJSONSize)
	if err != nil {
		return err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return fmt.Errorf("index.json: %w", err)
	}
	if want := layoutIndex(h.Images); !reflect.DeepEqual(idx.Manifests, want.Manifests) {
		return fmt.Errorf("index.json does not list the images of %s", HeaderName)
	}
	return nil
}

// check makes sure a header read from a file is self-consistent, so the
// rest of apply can trust its lists.
func (h *Header) check() error {
	if h.MediaType != HeaderMediaType || h.Version != Version && h.Version != VersionDerive {
		return fmt.Errorf("media type %q version %d: this blockfile reads %s versions %d and %d", h.MediaType, h.Version, HeaderMediaType, Version, VersionDerive)
	}
	if len(h.Images) == 0 {
		return errors.New("no images")
	}
	names := map[string]bool{}
	for _, im := range h.Images {
		// The name becomes a tag and may expand {name} in an output path.
		if err := blocks.ValidateName(im.Name); err != nil {
			return err
		}
		if names[im.Name] {
			return fmt.Errorf("image name %s is given twice", blocks.Quote(im.Name))
		}
		names[im.Name] = true
		for _, d := range []ocispec.Descriptor{im.Index, im.Standard} {
			if err := d.Digest.Validate(); err != nil || d.Size <= 0 {
				return fmt.Errorf("image %s: bad descriptor %s/%d", im.Name, d.Digest, d.Size)
			}
		}
	}
	seen := map[digest.Digest]bool{}
	metaDone := false
	var metaTotal int64
	for _, b := range h.Blobs {
		if err := b.Digest.Validate(); err != nil || b.Digest.Algorithm() != digest.SHA256 {
			return fmt.Errorf("blob %q: not a sha256 digest", b.Digest)
		}
		if b.Size < 0 {
			return fmt.Errorf("blob %s: negative size", b.Digest)
		}
		if seen[b.Digest] {
			return fmt.Errorf("blob %s is listed twice", b.Digest)
		}
		seen[b.Digest] = true
		if b.Derive != nil {
			if err := b.Derive.check(b, h.Version); err != nil {
				return err
			}
			for _, d := range []digest.Digest{b.Derive.Blocked.Digest, b.Derive.BlockSet.Digest} {
				if seen[d] {
					return fmt.Errorf("blob %s: derived blob %s is listed twice", b.Digest, d)
				}
				seen[d] = true
			}
		}
		if b.Patch != nil {
			if err := b.Patch.check(b); err != nil {
				return err
			}
			if seen[b.Patch.Digest] {
				return fmt.Errorf("blob %s: patch %s is listed twice", b.Digest, b.Patch.Digest)
			}
			seen[b.Patch.Digest] = true
		}
		// Indexes and manifests come first, so apply can check the
		// prerequisites before it reads the bulk. Apply holds them in
		// memory while it walks the images: each, and all, are bounded.
		if !b.Kind.isManifest() {
			metaDone = true
		} else if metaDone {
			return fmt.Errorf("manifest %s comes after layer data", b.Digest)
		} else {
			if b.Size > maxJSONSize {
				return fmt.Errorf("manifest %s: %d bytes, limit %d: %w", b.Digest, b.Size, maxJSONSize, ErrBound)
			}
			if metaTotal += b.Size; metaTotal > maxMetaTotal {
				return fmt.Errorf("manifests: more than %d bytes in all: %w", maxMetaTotal, ErrBound)
			}
		}
	}
	if t := totals(h.Blobs); t.Blobs != h.Adds.Blobs || t.Bytes != h.Adds.Bytes {
		return fmt.Errorf("adds says %d blobs, %d bytes; the blob list has %d, %d", h.Adds.Blobs, h.Adds.Bytes, t.Blobs, t.Bytes)
	}
	var patchedBytes int64
	for _, b := range h.Blobs {
		if b.Patch != nil {
			patchedBytes += b.Size
		}
	}
	if patchedBytes > MaxPatchedBytes {
		return fmt.Errorf("%d bytes of blobs travel as patches, more than the %d a bundle may rebuild: %w", patchedBytes, int64(MaxPatchedBytes), ErrBound)
	}
	if n := h.deltaDeflate(); n > MaxDeflatedBytes {
		return fmt.Errorf("block deltas ask for %d bytes to be deflated, more than the %d a bundle may ask: %w", n, int64(MaxDeflatedBytes), ErrBound)
	}
	if got, want := patched(h.Blobs), h.Patched; (got == nil) != (want == nil) || got != nil && *got != *want {
		return fmt.Errorf("patched says %v; the blob list has %v", want, got)
	}
	for _, b := range h.Blobs {
		// A patch base is a blob the target already holds, never one the
		// bundle brings (apply reads bases from the store).
		if b.Patch != nil && seen[b.Patch.Base.Digest] {
			return fmt.Errorf("blob %s: its patch base %s is in the bundle", b.Digest, b.Patch.Base.Digest)
		}
	}
	return nil
}

// Next returns the next blob and a reader of its tar entry that verifies
// it (digest and size, at EOF): the blob's bytes, or for a patched blob
// (Blob.Patch) the patch's. It returns io.EOF after the last blob, once it
// has checked that nothing follows. A tar entry that is not the blob the
// header lists next is an error.
func (r *Reader) Next() (Blob, io.Reader, error) {
	b, err := r.advance()
	if err != nil {
		return b, nil, err
	}
	return b, &named{r: store.VerifyReader(r.tr, b.entry()), what: r.path}, nil
}

// nextRaw is Next without the digest check: the returned reader yields the
// entry's bytes (size-checked by the tar reader) for a caller that hashes
// them itself, as ingest does through the store's BlobWriter, so the bytes
// are not hashed twice.
func (r *Reader) nextRaw() (Blob, io.Reader, error) {
	b, err := r.advance()
	if err != nil {
		return b, nil, err
	}
	return b, &named{r: r.tr, what: r.path}, nil
}

// advance moves to the next blob entry and checks it is the one the header
// lists next, with its size.
func (r *Reader) advance() (Blob, error) {
	th, err := r.tr.Next()
	for err == nil && th.Typeflag == tar.TypeDir && (th.Name == "blobs/" || th.Name == blobDir) {
		r.end = r.cr.n
		th, err = r.tr.Next()
	}
	if r.next == len(r.Header.Blobs) {
		if err == io.EOF {
			// Go's tar reader takes a missing end-of-archive marker for
			// the end; a bundle must have it, or it was cut short.
			if r.cr.n < r.end+2*512 {
				return Blob{}, fmt.Errorf("bundle %s: truncated: no end-of-archive marker after the last blob", r.path)
			}
			return Blob{}, io.EOF
		}
		if err != nil {
			return Blob{}, fmt.Errorf("bundle %s: after the last blob: %w", r.path, err)
		}
		return Blob{}, fmt.Errorf("bundle %s: unexpected entry %q after the last blob", r.path, th.Name)
	}
	b := r.Header.Blobs[r.next]
	if err != nil {
		return Blob{}, fmt.Errorf("bundle %s: truncated or damaged: %d of %d blobs read, next is %s: %w", r.path, r.next, len(r.Header.Blobs), b, noEOF(err))
	}
	e := b.entry()
	if th.Name != blobName(e.Digest) || th.Typeflag != tar.TypeReg || th.Size != e.Size {
		return Blob{}, fmt.Errorf("bundle %s: entry %q (%d bytes) where blob %s was expected", r.path, th.Name, th.Size, b)
	}
	r.next++
	r.end = r.cr.n + (e.Size+511)/512*512
	return b, nil
}

// named adds the bundle path to read errors (truncation shows up here).
type named struct {
	r    io.Reader
	what string
}

func (n *named) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("bundle %s: %w", n.what, noEOF(err))
	}
	return k, err
}

// noEOF turns an end of file in the middle of a bundle into what it is.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
