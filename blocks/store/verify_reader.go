package store

import (
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// VerifyReader returns a reader of r that checks r against desc while it
// streams: reading more than desc.Size bytes fails at once, and at EOF a short
// read or a digest mismatch fails, with errors naming the digest. desc.Size is
// never used to allocate. Only a reader that returned io.EOF has been verified.
func VerifyReader(r io.Reader, desc ocispec.Descriptor) io.Reader {
	return newVerifier(r, desc, "")
}

// verifier is VerifyReader; path, if set, is named in errors (the blob file).
type verifier struct {
	r    io.Reader
	desc ocispec.Descriptor
	path string
	h    hash.Hash
	n    int64
	err  error // sticky: once failed (or verified), every Read returns it
}

func newVerifier(r io.Reader, desc ocispec.Descriptor, path string) *verifier {
	v := &verifier{r: r, desc: desc, path: path}
	switch {
	case desc.Digest.Validate() != nil:
		v.err = fmt.Errorf("%s: %w", v.name(), ErrInvalid)
	case desc.Size < 0:
		v.err = fmt.Errorf("%s: negative size %d: %w", v.name(), desc.Size, ErrInvalid)
	default:
		v.h = desc.Digest.Algorithm().Hash()
	}
	return v
}

// name is how errors name the blob: "sha256:... (path)" or "sha256:...".
func (v *verifier) name() string {
	if v.path != "" {
		return fmt.Sprintf("blob %s (%s)", v.desc.Digest, v.path)
	}
	return fmt.Sprintf("blob %q", v.desc.Digest)
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	// Ask for at most one byte past the declared size, so overlong content is
	// caught without reading any further.
	if rem := v.desc.Size - v.n + 1; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.desc.Size {
		v.err = fmt.Errorf("%s: content is longer than the declared %d bytes: %w", v.name(), v.desc.Size, ErrSizeMismatch)
		// Hand back only the declared bytes; the caller must not use more.
		return n - int(v.n-v.desc.Size), v.err
	}
	if errors.Is(err, io.EOF) {
		v.err = v.check()
		return n, v.err
	}
	if err != nil {
		v.err = fmt.Errorf("%s: %w", v.name(), err)
	}
	return n, v.err
}

// check runs at EOF: size and digest must both match.
func (v *verifier) check() error {
	if v.n != v.desc.Size {
		return fmt.Errorf("%s: content is %d bytes, declared %d: %w", v.name(), v.n, v.desc.Size, ErrSizeMismatch)
	}
	if got := digest.NewDigest(v.desc.Digest.Algorithm(), v.h); got != v.desc.Digest {
		return fmt.Errorf("%s: content hashes to %s: %w", v.name(), got, ErrDigestMismatch)
	}
	return io.EOF
}
