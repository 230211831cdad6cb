package layer

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// dirStore is a MemberStore keeping blobs as files, for tests and benchmarks
// with data too large to hold in memory.
type dirStore struct {
	dir     string
	mu      sync.Mutex
	members map[string]ocispec.Descriptor
	pushes  int
}

func newDirStore(t testing.TB) *dirStore {
	return &dirStore{dir: t.TempDir(), members: map[string]ocispec.Descriptor{}}
}

func (s *dirStore) path(d digest.Digest) string { return filepath.Join(s.dir, d.Encoded()) }

func (s *dirStore) LookupMember(_ context.Context, raw digest.Digest, c blocks.Compression) (ocispec.Descriptor, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.members[string(c)+raw.String()]
	return d, ok, nil
}

func (s *dirStore) RecordMember(_ context.Context, raw digest.Digest, c blocks.Compression, m ocispec.Descriptor) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members[string(c)+raw.String()] = m
	return nil
}

func (s *dirStore) Exists(_ context.Context, d digest.Digest) (bool, error) {
	_, err := os.Stat(s.path(d))
	return err == nil, nil
}

func (s *dirStore) Push(_ context.Context, desc ocispec.Descriptor, r io.Reader) error {
	f, err := os.CreateTemp(s.dir, "tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	v := desc.Digest.Verifier()
	n, err := io.Copy(io.MultiWriter(f, v), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != desc.Size || !v.Verified() {
		return fmt.Errorf("push %s: content does not match", desc.Digest)
	}
	s.mu.Lock()
	s.pushes++
	s.mu.Unlock()
	return os.Rename(f.Name(), s.path(desc.Digest))
}

// Fetch verifies as the real store does: a mismatch is an error at EOF.
func (s *dirStore) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	f, err := os.Open(s.path(desc.Digest))
	if err != nil {
		return nil, err
	}
	return &verifyReader{f: f, r: io.LimitReader(f, desc.Size+1), v: desc.Digest.Verifier(), desc: desc}, nil
}

type verifyReader struct {
	f    *os.File
	r    io.Reader
	v    digest.Verifier
	n    int64
	desc ocispec.Descriptor
}

func (r *verifyReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.v.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF && (r.n != r.desc.Size || !r.v.Verified()) {
		return n, fmt.Errorf("%s: content does not match", r.desc.Digest)
	}
	return n, err
}

func (r *verifyReader) Close() error { return r.f.Close() }

// writeLargeTar writes a tar with a file of size bytes drawn from a
// deterministic PRNG stream (never held in memory) between small files.
func writeLargeTar(w io.Writer, size int64) error {
	tw := tar.NewWriter(w)
	small := func(name, s string) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(s))}); err != nil {
			return err
		}
		_, err := io.WriteString(tw, s)
		return err
	}
	if err := small("before.txt", "before"); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big/large.bin", Mode: 0o644, Size: size}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, rand.NewChaCha8([32]byte{42}), size); err != nil {
		return err
	}
	if err := small("after.txt", "after"); err != nil {
		return err
	}
	return tw.Close()
}

// TestLargeFile splits and hydrates a layer with a file over 100 MB, streaming
// throughout (the test itself holds no layer in memory).
func TestLargeFile(t *testing.T) {
	if testing.Short() {
		t.Skip("large file round trip: not in -short")
	}
	const size = 150<<20 + 123
	for _, c := range compressions {
		t.Run(string(c), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			ms := newDirStore(t)
			pr, pw := io.Pipe()
			inHash := digest.SHA256.Digester()
			go func() { pw.CloseWithError(writeLargeTar(io.MultiWriter(pw, inHash.Hash()), size)) }()
			stdF, _ := os.Create(filepath.Join(dir, "std"))
			blkF, _ := os.Create(filepath.Join(dir, "blk"))
			defer stdF.Close()
			defer blkF.Close()
			res, err := Split(ctx, pr, stdF, blkF, SplitOptions{Compression: c, MinBlockSize: 1 << 20, Members: ms, TempDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if res.DiffID != inHash.Digest() || len(res.Blocks) != 1 || res.Blocks[0].Raw.Size != size {
				t.Fatalf("result %+v", res)
			}
			if res.Blocked.Size > 64<<10 {
				t.Errorf("blocked layer is %d bytes; it should hold no block data", res.Blocked.Size)
			}
			// The standard layer decompresses (stock multi-member reader) to the input.
			stdF.Seek(0, io.SeekStart)
			var dec io.Reader
			if c == blocks.Zstd {
				d, _ := zstd.NewReader(stdF)
				defer d.Close()
				dec = d
			} else {
				g, err := gzip.NewReader(stdF)
				if err != nil {
					t.Fatal(err)
				}
				dec = g
			}
			h := newHashWriter()
			if _, err := io.Copy(h, dec); err != nil || h.digest() != res.DiffID {
				t.Fatalf("standard layer decompresses to %s (%v), want %s", h.digest(), err, res.DiffID)
			}
			blkF.Seek(0, io.SeekStart)
			out := newHashWriter()
			if err := Hydrate(ctx, blkF, out, memberDescs(res), ms, res.Standard); err != nil {
				t.Fatal(err)
			}
			if out.digest() != res.Standard.Digest {
				t.Fatalf("hydrated %s, want %s", out.digest(), res.Standard.Digest)
			}
		})
	}
}
