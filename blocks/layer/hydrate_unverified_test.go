package layer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
)

// countingStore is the real store, counting how members are read.
type countingStore struct {
	*store.Store
	fetches, opens atomic.Int32
}

func (c *countingStore) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	c.fetches.Add(1)
	return c.Store.Fetch(ctx, d)
}

func (c *countingStore) OpenUnverified(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	c.opens.Add(1)
	return c.Store.OpenUnverified(ctx, d)
}

// verifyingOnly hides OpenUnverified: every member is hashed as it is
// fetched, the way Hydrate read members before MemberOpener.
type verifyingOnly struct{ s *store.Store }

func (v verifyingOnly) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	return v.s.Fetch(ctx, d)
}

func setBlob(t *testing.T, s *store.Store, d digest.Digest, data []byte) {
	t.Helper()
	p := s.BlobPath(d)
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
}

// With the store as fetcher, Hydrate reads members unhashed (the output
// digest covers them) and, when anything fails, re-reads them with Fetch,
// so a corrupt member fails with the very error a verifying read gives:
// naming the stub path, the member digest and the blob file.
func TestHydrateUnverifiedMembers(t *testing.T) {
	ctx := context.Background()
	a, b, c := randBytes(50, 30000), randBytes(51, 50000), randBytes(52, 20000)
	tarb := makeTar(t,
		reg("etc/conf", []byte("x=1\n")),
		reg("app/a.jar", a),
		reg("app/b.jar", b),
		reg("app/readme", []byte("hello\n")),
		reg("opt/a-copy.jar", a), // the same member again
		reg("opt/c.jar", c),
	)
	for _, comp := range compressions {
		t.Run(string(comp), func(t *testing.T) {
			s, err := store.Create(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			res, std, blk, err := splitBytes(t, tarb, SplitOptions{Compression: comp, MinBlockSize: testMin, Members: s})
			if err != nil {
				t.Fatal(err)
			}
			members := memberDescs(res)
			if len(res.Blocks) != 4 || len(members) != 3 {
				t.Fatalf("%d blocks, %d members; want 4 and 3", len(res.Blocks), len(members))
			}
			cs := &countingStore{Store: s}
			run := func(layer []byte, f MemberFetcher, want ocispec.Descriptor) ([]byte, error) {
				var out bytes.Buffer
				err := Hydrate(ctx, bytes.NewReader(layer), &out, members, f, want)
				return out.Bytes(), err
			}

			got, err := run(blk, cs, res.Standard)
			if err != nil || !bytes.Equal(got, std) {
				t.Fatalf("intact: %v", err)
			}
			if f, o := cs.fetches.Load(), cs.opens.Load(); f != 0 || o != 4 {
				t.Fatalf("intact: %d verifying fetches and %d unverified opens, want 0 and 4", f, o)
			}

			// A wrong wanted digest: every member used is checked again (once
			// each), none is bad, so the error is the output mismatch.
			wrong := res.Standard
			wrong.Digest = digest.FromString("other")
			cs.fetches.Store(0)
			if _, err := run(blk, cs, wrong); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "produced "+res.Standard.Digest.String()) {
				t.Errorf("wrong want: %v", err)
			}
			if f := cs.fetches.Load(); f != 3 {
				t.Errorf("wrong want: %d members re-checked, want 3", f)
			}

			garbage := append(bytes.Clone(blk), "garbage"...)
			for i, m := range members {
				firstStub := map[int]string{0: "app/.import.a.jar", 1: "app/.import.b.jar", 2: "opt/.import.c.jar"}[i]
				orig, err := os.ReadFile(s.BlobPath(m.Digest))
				if err != nil {
					t.Fatal(err)
				}
				flipped := bytes.Clone(orig)
				flipped[len(flipped)/2] ^= 0x40
				for _, tc := range []struct {
					name  string
					data  []byte
					layer []byte
					want  error
				}{
					{"flipped byte", flipped, blk, store.ErrDigestMismatch},
					{"cut short", orig[:len(orig)-3], blk, store.ErrSizeMismatch},
					{"flipped byte, then trailing garbage", flipped, garbage, store.ErrDigestMismatch},
				} {
					setBlob(t, s, m.Digest, tc.data)
					_, errFast := run(tc.layer, cs, res.Standard)
					_, errOld := run(tc.layer, verifyingOnly{s}, res.Standard)
					if errFast == nil || errOld == nil {
						t.Fatalf("member %d %s: hydrate succeeded (%v, %v)", i, tc.name, errFast, errOld)
					}
					if errFast.Error() != errOld.Error() {
						t.Errorf("member %d %s: error\n  %v\nwant, as a verifying fetch gives,\n  %v", i, tc.name, errFast, errOld)
					}
					for _, want := range []string{"stub " + firstStub, m.Digest.String(), s.BlobPath(m.Digest)} {
						if !strings.Contains(errFast.Error(), want) {
							t.Errorf("member %d %s: error %q does not name %s", i, tc.name, errFast, want)
						}
					}
					if !errors.Is(errFast, tc.want) {
						t.Errorf("member %d %s: %v, want %v", i, tc.name, errFast, tc.want)
					}
				}
				setBlob(t, s, m.Digest, orig)
			}
			if got, err := run(blk, cs, res.Standard); err != nil || !bytes.Equal(got, std) {
				t.Fatalf("restored: %v", err)
			}
		})
	}
}

// Verbatim members larger than the gzip reader's buffer and flush size are
// copied out exactly as they are consumed (gzipSource releases and compacts
// what it recorded), around stub members; a byte changed inside such a
// member fails the hydrate.
func TestHydrateLargeVerbatimMembers(t *testing.T) {
	ctx := context.Background()
	jar := randBytes(60, 100000)
	tarb := makeTar(t,
		reg("big/one.bin", randBytes(61, 3<<20)), // incompressible, verbatim
		reg("app/a.jar", jar),
		reg("big/two.txt", bytes.Repeat([]byte("compressible text line\n"), 200000)),
		reg("app/b.jar", randBytes(62, 70000)),
		reg("big/three.bin", randBytes(63, 600000)),
	)
	for _, comp := range compressions {
		t.Run(string(comp), func(t *testing.T) {
			ms := newMemStore()
			res, std, blk, err := splitBytes(t, tarb, SplitOptions{Compression: comp, Members: ms,
				IsImported: func(name string) bool { return strings.HasSuffix(name, ".jar") }})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Blocks) != 2 || len(blk) < 3<<20 {
				t.Fatalf("%d blocks, blocked layer of %d bytes; want 2 blocks and the big files verbatim", len(res.Blocks), len(blk))
			}
			var out bytes.Buffer
			if err := Hydrate(ctx, bytes.NewReader(blk), &out, memberDescs(res), ms, res.Standard); err != nil || !bytes.Equal(out.Bytes(), std) {
				t.Fatalf("hydrate: %v", err)
			}
			stubs, err := ReadStubs(ctx, bytes.NewReader(blk))
			if err != nil || len(stubs) != 2 || stubs[0].Path != "app/a.jar" || stubs[1].Path != "app/b.jar" {
				t.Fatalf("ReadStubs: %v %+v", err, stubs)
			}
			// A reader handing out a few bytes at a time changes nothing.
			out.Reset()
			if err := Hydrate(ctx, iotestHalf{bytes.NewReader(blk)}, &out, memberDescs(res), ms, res.Standard); err != nil || !bytes.Equal(out.Bytes(), std) {
				t.Fatalf("hydrate from a slow reader: %v", err)
			}
			for _, at := range []int{len(blk) / 3, len(blk) / 2, len(blk) - 2000} {
				bad := bytes.Clone(blk)
				bad[at] ^= 0x01
				if err := Hydrate(ctx, bytes.NewReader(bad), io.Discard, memberDescs(res), ms, res.Standard); err == nil {
					t.Errorf("a byte changed at %d of %d: hydrate succeeded", at, len(blk))
				}
			}
		})
	}
}

// iotestHalf reads at most half of what is asked (and at least one byte).
type iotestHalf struct{ r io.Reader }

func (h iotestHalf) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:(len(p)+1)/2]
	}
	return h.r.Read(p)
}
