package layer

import (
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// stubMembers groups the stubs of a blocked layer by the stub member that
// holds them: the number of stubs of each member, in order.
func stubMembers(t testing.TB, blk []byte) ([]int, []int64) {
	t.Helper()
	stubs, err := ReadStubs(context.Background(), bytes.NewReader(blk))
	if err != nil {
		t.Fatalf("ReadStubs: %v", err)
	}
	var counts []int
	var offsets []int64
	for i, s := range stubs {
		if i == 0 || s.Offset != stubs[i-1].Offset {
			counts = append(counts, 0)
			offsets = append(offsets, s.Offset)
		}
		counts[len(counts)-1]++
	}
	return counts, offsets
}

// memberSize is the uncompressed size of the gzip member at off.
func memberSize(t testing.TB, blk []byte, off int64) int {
	t.Helper()
	zr, err := stdgzip.NewReader(bytes.NewReader(blk[off:]))
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

func splitAndHydrate(t *testing.T, c blocks.Compression, tarb []byte, opts SplitOptions) (*SplitResult, []byte, *memStore) {
	t.Helper()
	ms := newMemStore()
	opts.Compression, opts.Members = c, ms
	res, std, blk, err := splitBytes(t, tarb, opts)
	if err != nil {
		t.Fatalf("Split: %v", err)
	}
	var out bytes.Buffer
	if err := Hydrate(context.Background(), bytes.NewReader(blk), &out, memberDescs(res), ms, res.Standard); err != nil || !bytes.Equal(out.Bytes(), std) {
		t.Fatalf("Hydrate: %v (exact %v)", err, bytes.Equal(out.Bytes(), std))
	}
	return res, blk, ms
}

func TestConsecutiveStubsShareAMember(t *testing.T) {
	var es []entry
	es = append(es, dir("app/libs/"))
	for i := range 5 {
		es = append(es, reg(fmt.Sprintf("app/libs/lib-%d.jar", i), randBytes(uint64(60+i), 5000+i)))
	}
	es = append(es, reg("app/README", []byte("readme")))
	for i := range 3 {
		es = append(es, reg(fmt.Sprintf("app/more/m-%d.jar", i), randBytes(uint64(70+i), 6000)))
	}
	tarb := makeTar(t, es...)
	for _, c := range compressions {
		t.Run(string(c), func(t *testing.T) {
			res, blk, _ := splitAndHydrate(t, c, tarb, SplitOptions{MinBlockSize: testMin})
			if len(res.Blocks) != 8 {
				t.Fatalf("%d blocks, want 8", len(res.Blocks))
			}
			if counts, _ := stubMembers(t, blk); fmt.Sprint(counts) != "[5 3]" {
				t.Errorf("stubs per stub member %v, want [5 3]", counts)
			}
		})
	}
}

// A long run of blocks is cut into stub members of at most maxRunStubs
// entries and maxRunBytes uncompressed bytes.
func TestStubMemberCap(t *testing.T) {
	var many []entry
	for i := range maxRunStubs + 44 {
		many = append(many, reg(fmt.Sprintf("libs/%04d.jar", i), randBytes(uint64(i), 100+i)))
	}
	var long []entry // PAX names: each stub entry is about 12 KB
	for i := range 150 {
		long = append(long, reg(fmt.Sprintf("deep/%s/%04d.jar", strings.Repeat("d", 3000), i), randBytes(uint64(i), 200)))
	}
	for _, c := range compressions {
		t.Run(string(c), func(t *testing.T) {
			_, blk, _ := splitAndHydrate(t, c, makeTar(t, many...), SplitOptions{MinBlockSize: 1})
			if counts, _ := stubMembers(t, blk); fmt.Sprint(counts) != fmt.Sprint([]int{maxRunStubs, 44}) {
				t.Errorf("stubs per stub member %v, want [%d 44]", counts, maxRunStubs)
			}
			_, blk, _ = splitAndHydrate(t, c, makeTar(t, long...), SplitOptions{MinBlockSize: 1})
			counts, offsets := stubMembers(t, blk)
			total := 0
			for _, n := range counts {
				total += n
			}
			if total != 150 || len(counts) < 2 {
				t.Fatalf("stubs per stub member %v: want 150 stubs cut by the byte cap", counts)
			}
			if c == blocks.Gzip {
				for i, off := range offsets {
					if n := memberSize(t, blk, off); n > maxRunBytes || (i < len(offsets)-1 && n < maxRunBytes-16<<10) {
						t.Errorf("stub member %d holds %d bytes uncompressed, cap %d", i, n, maxRunBytes)
					}
				}
			}
		})
	}
}

func TestHydrateMultiStubTamper(t *testing.T) {
	names := []string{"app/libs/a.jar", "app/libs/b.jar", "app/libs/c.jar"}
	var es []entry
	for i, n := range names {
		es = append(es, reg(n, randBytes(uint64(80+i), 9000+i)))
	}
	tarb := makeTar(t, append(es, reg("app/z.txt", []byte("z")))...)
	eoa := make([]byte, 1024)
	for _, c := range compressions {
		t.Run(string(c), func(t *testing.T) {
			res, blk, ms := splitAndHydrate(t, c, tarb, SplitOptions{MinBlockSize: testMin})
			members := memberDescs(res)
			if counts, _ := stubMembers(t, blk); fmt.Sprint(counts) != "[3]" {
				t.Fatalf("stubs per stub member %v, want [3]", counts)
			}
			stubOf := func(i int) blocks.Stub {
				b := res.Blocks[i]
				return blocks.Stub{Block: b.Raw, Member: blocks.Ref{Digest: b.Member.Digest, Size: b.Member.Size},
					Header: rawHeader(t, es[i].hdr)}
			}
			entries := func(i int) []byte {
				e, err := stubEntry(names[i], stubOf(i))
				if err != nil {
					t.Fatal(err)
				}
				return e
			}
			all := bytes.Join([][]byte{entries(0), entries(1), entries(2)}, nil)
			tail := makeTar(t, reg("app/z.txt", []byte("z")))
			layer := func(stubMember []byte, more ...[]byte) []byte {
				tm := (&tamper{c: c}).verbatim(t, stubMember)
				for _, m := range more {
					tm.verbatim(t, m)
				}
				return tm.verbatim(t, tail).buf.Bytes()
			}
			// The hand-built layer is the real one.
			if got := layer(all); !bytes.Equal(got, blk) {
				t.Fatalf("hand-built blocked layer differs from Split's")
			}
			hydrate := func(l []byte, mem []ocispec.Descriptor) error {
				return Hydrate(context.Background(), bytes.NewReader(l), io.Discard, mem, ms, res.Standard)
			}
			unlisted := stubOf(1)
			unlisted.Member = blocks.Ref{Digest: sha([]byte("elsewhere")), Size: 77}
			e1, _ := stubEntry(names[1], unlisted)
			badPad := append([]byte{}, all...)
			badPad[len(entries(0))-1] = 'x' // last padding byte of the first stub
			nonStub := makeTar(t, reg("app/libs/x.txt", []byte("plain")))
			nonStub = nonStub[:len(nonStub)-1024]
			cases := []struct {
				name  string
				layer []byte
				mem   []ocispec.Descriptor
				want  error
				text  string
			}{
				{"middle stub names an unlisted member", layer(bytes.Join([][]byte{entries(0), e1, entries(2)}, nil)), members, ErrNotListed,
					"stub app/libs/.import.b.jar: block " + res.Blocks[1].Raw.Digest.String() + " is not listed in the block set"},
				{"one member of three not listed", blk, members[:1], ErrNotListed, "stub app/libs/.import.b.jar"},
				{"stub member cut inside the second stub", layer(all[:len(entries(0))+700]), members, ErrMalformed, ""},
				{"stub member cut at an entry boundary", layer(all[:len(entries(0))+len(entries(1))]), members, ErrMismatch, ""},
				{"compressed stub member cut", func() []byte {
					l := layer(all)
					return l[:len(l)/2]
				}(), members, ErrMalformed, ""},
				{"non-zero padding between stubs", layer(badPad), members, ErrMalformed, "non-zero padding"},
				{"end-of-archive after stubs", layer(append(append([]byte{}, all...), eoa...)), members, ErrMalformed, ""},
				{"stub then a plain file in one member", layer(append(append([]byte{}, all...), nonStub...)), members, ErrMalformed, "is not a stub"},
				{"plain file then stubs in one member", layer(append(append([]byte{}, nonStub...), all...)), members, ErrMalformed, "holds stub content"},
				{"stubs in the wrong order", layer(bytes.Join([][]byte{entries(1), entries(0), entries(2)}, nil)), members, ErrMismatch, ""},
				{"stub with a misnamed entry", func() []byte {
					e, err := stubEntryNamed("app/libs/.import.zzz.jar", stubOf(1))
					if err != nil {
						t.Fatal(err)
					}
					return layer(bytes.Join([][]byte{entries(0), e, entries(2)}, nil))
				}(), members, ErrBadStub, ".import.zzz.jar"},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					err := hydrate(tc.layer, tc.mem)
					t.Log(err)
					if !errors.Is(err, tc.want) {
						t.Fatalf("got %v, want %v", err, tc.want)
					}
					if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
						t.Errorf("error %q does not say %q", err, tc.text)
					}
				})
			}
			// Stubs split over two stub members hydrate to the same layer:
			// readers do not depend on where runs are cut.
			var out bytes.Buffer
			two := (&tamper{c: c}).verbatim(t, entries(0)).verbatim(t, append(entries(1), entries(2)...)).verbatim(t, tail).buf.Bytes()
			if err := Hydrate(context.Background(), bytes.NewReader(two), &out, members, ms, res.Standard); err != nil {
				t.Errorf("stubs cut into two members: %v", err)
			}
		})
	}
}
