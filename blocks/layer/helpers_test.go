package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// memStore is an in-memory MemberStore that verifies what it is given and
// counts pushes, standing in for blocks/store in unit tests.
type memStore struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte
	members map[string]ocispec.Descriptor
	pushes  int
}

func newMemStore() *memStore {
	return &memStore{blobs: map[digest.Digest][]byte{}, members: map[string]ocispec.Descriptor{}}
}

func (m *memStore) LookupMember(_ context.Context, raw digest.Digest, c blocks.Compression) (ocispec.Descriptor, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.members[string(c)+" "+raw.String()]
	return d, ok, nil
}

func (m *memStore) RecordMember(_ context.Context, raw digest.Digest, c blocks.Compression, member ocispec.Descriptor) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.members[string(c)+" "+raw.String()] = member
	return nil
}

func (m *memStore) Exists(_ context.Context, d digest.Digest) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.blobs[d]
	return ok, nil
}

func (m *memStore) Push(_ context.Context, desc ocispec.Descriptor, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if int64(len(b)) != desc.Size || digest.FromBytes(b) != desc.Digest {
		return fmt.Errorf("push %s: content does not match", desc.Digest)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pushes++
	m.blobs[desc.Digest] = b
	return nil
}

func (m *memStore) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("%s: not found", desc.Digest)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// fetchFunc adapts a function to MemberFetcher (for tamper cases).
type fetchFunc func(ocispec.Descriptor) (io.ReadCloser, error)

func (f fetchFunc) Fetch(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) { return f(d) }

// entry is a tar entry to write with archive/tar.
type entry struct {
	hdr  tar.Header
	data []byte
}

func reg(name string, data []byte) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}, data: data}
}

func dir(name string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

func makeTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatalf("tar data %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rawHeader returns the raw header record(s) archive/tar writes for h.
func rawHeader(t testing.TB, h tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&h); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// randBytes returns n deterministic pseudo-random (incompressible) bytes.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	_, _ = r.Read(b)
	return b
}

func sha(b []byte) digest.Digest { return digest.FromBytes(b) }

// splitBytes runs Split on a tar held in memory.
func splitBytes(t testing.TB, tarb []byte, opts SplitOptions) (*SplitResult, []byte, []byte, error) {
	t.Helper()
	var std, blk bytes.Buffer
	if opts.TempDir == "" {
		opts.TempDir = t.TempDir()
	}
	res, err := Split(context.Background(), bytes.NewReader(tarb), &std, &blk, opts)
	return res, std.Bytes(), blk.Bytes(), err
}

func memberDescs(res *SplitResult) []ocispec.Descriptor {
	var ds []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	for _, b := range res.Blocks {
		if !seen[b.Member.Digest] {
			seen[b.Member.Digest] = true
			ds = append(ds, b.Member)
		}
	}
	return ds
}

// hashWriter discards and hashes.
type hashWriter struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func newHashWriter() *hashWriter { return &hashWriter{h: sha256.New()} }

func (w *hashWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return w.h.Write(p) }
func (w *hashWriter) digest() digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, w.h.Sum(nil))
}
