package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blockfile/blockfile/blocks"
	"github.com/opencontainers/go-digest"
)

// dehydrateTar is a layer of small files with blocks among them (alone and
// in runs, incompressible and compressible, a long PAX name, more than
// maxRunStubs consecutive), the shape Dehydrate exists for.
func dehydrateTar(t testing.TB) []byte {
	var es []entry
	es = append(es, dir("etc/"), reg("etc/a.conf", []byte("a=1\n")), symlink("etc/b", "a.conf"))
	es = append(es, reg("usr/lib/libx.so", randBytes(1, 200<<10)))
	es = append(es, reg("usr/share/doc/x", bytes.Repeat([]byte("doc "), 300)))
	for i := range 3 {
		es = append(es, reg(fmt.Sprintf("app/libs/l%d.jar", i), randBytes(uint64(10+i), 70<<10+i)))
	}
	es = append(es, reg("usr/share/big.txt", bytes.Repeat([]byte("compressible line of text\n"), 20000)))
	es = append(es, reg("opt/"+strings.Repeat("long-directory-name/", 8)+"f.bin", randBytes(3, 90<<10)))
	for i := range maxRunStubs + 3 {
		es = append(es, reg(fmt.Sprintf("many/f%03d", i), append([]byte{byte(i)}, make([]byte, 64<<10)...)))
	}
	es = append(es, reg("etc/z.conf", []byte("z\n")), hardlink("etc/y", "etc/z.conf"))
	return makeTar(t, es...)
}

// TestDehydrateIsSplitsBlockedLayer: from the standard layer Split wrote,
// Dehydrate writes Split's blocked layer byte for byte, and its parts are
// Layout's for that blocked layer.
func TestDehydrateIsSplitsBlockedLayer(t *testing.T) {
	for _, tc := range []struct {
		name string
		tar  []byte
	}{
		{"mixed", dehydrateTar(t)},
		{"no blocks", makeTar(t, reg("a", []byte("x")), dir("d/"))},
		{"only blocks", makeTar(t, reg("a", randBytes(5, 100<<10)), reg("b", randBytes(6, 100<<10)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, std, blk, err := splitBytes(t, tc.tar, SplitOptions{Compression: blocks.Gzip, MinBlockSize: 64 << 10, Members: newMemStore()})
			if err != nil {
				t.Fatal(err)
			}
			_, want, err := Layout(context.Background(), bytes.NewReader(blk), LayerMediaType(blocks.Gzip))
			if err != nil {
				t.Fatal(err)
			}
			// Without a block map (every block member inflated), with one
			// (none inflated), and with one that lacks a member (that one
			// inflated).
			for _, known := range []map[digest.Digest]digest.Digest{nil, blockMapOf(res), blockMapOf(res, 0)} {
				var out bytes.Buffer
				parts, err := Dehydrate(context.Background(), bytes.NewReader(std), int64(len(std)), &out, DehydrateOptions{Workers: 2, Known: known})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out.Bytes(), blk) {
					t.Fatalf("block map of %d: dehydrated %d bytes (%s), Split wrote a blocked layer of %d (%s)", len(known), out.Len(), sha(out.Bytes()), len(blk), sha(blk))
				}
				if !reflect.DeepEqual(parts, want) {
					t.Fatalf("block map of %d: parts differ from Layout's:\n got %+v\nwant %+v", len(known), parts, want)
				}
				members := 0
				for _, p := range parts {
					if p.Kind == PartMember {
						members++
						if !bytes.Equal([]byte(sha(std[p.Offset:p.Offset+p.Size])), []byte(p.Member)) {
							t.Fatalf("member part at %d does not hash to %s", p.Offset, p.Member)
						}
					}
				}
				if members != len(res.Blocks) {
					t.Fatalf("%d member parts, Split made %d blocks", members, len(res.Blocks))
				}
			}
		})
	}
}

// blockMapOf maps the block members of res to their raw blocks, leaving out
// the blocks at the indexes skip.
func blockMapOf(res *SplitResult, skip ...int) map[digest.Digest]digest.Digest {
	out := map[digest.Digest]digest.Digest{}
	for i, b := range res.Blocks {
		if !slices.Contains(skip, i) {
			out[b.Member.Digest] = b.Raw.Digest
		}
	}
	return out
}

// TestDehydrateBlockMapInflatesNoBlock: with a block map, a layer whose
// block inflates past the budget dehydrates (its member is hashed, not
// inflated); a map entry naming another raw block gives a blocked layer
// that differs from Split's (the caller's digest check refuses it), not
// an error and not Split's.
func TestDehydrateBlockMapInflatesNoBlock(t *testing.T) {
	tb := makeTar(t, reg("big", make([]byte, 4<<20)), reg("small", []byte("s")), reg("other", randBytes(11, 100<<10)))
	res, std, blk, err := splitBytes(t, tb, SplitOptions{Compression: blocks.Gzip, MinBlockSize: 64 << 10, Members: newMemStore()})
	if err != nil {
		t.Fatal(err)
	}
	defer func(n int64) { inflateFloor = n }(inflateFloor)
	inflateFloor = 1 << 20
	ctx := context.Background()
	if _, err := Dehydrate(ctx, bytes.NewReader(std), int64(len(std)), &bytes.Buffer{}, DehydrateOptions{Workers: 2}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("without a block map, 4 MiB of zeros in a %d-byte layer, budget 1 MiB: %v, want ErrTooLarge", len(std), err)
	}
	var out bytes.Buffer
	if _, err := Dehydrate(ctx, bytes.NewReader(std), int64(len(std)), &out, DehydrateOptions{Workers: 2, Known: blockMapOf(res)}); err != nil {
		t.Fatalf("with a block map: %v", err)
	}
	if !bytes.Equal(out.Bytes(), blk) {
		t.Fatalf("with a block map: dehydrated %s, Split wrote %s", sha(out.Bytes()), sha(blk))
	}
	wrong := blockMapOf(res)
	wrong[res.Blocks[0].Member.Digest] = res.Blocks[1].Raw.Digest
	out.Reset()
	if _, err := Dehydrate(ctx, bytes.NewReader(std), int64(len(std)), &out, DehydrateOptions{Workers: 1, Known: wrong}); err != nil {
		t.Fatalf("wrong block map: %v", err)
	}
	if bytes.Equal(out.Bytes(), blk) {
		t.Fatal("a block map naming another raw block gave Split's blocked layer")
	}
}

// TestDehydrateRefusesWhatIsNotAStandardLayer: zstd, plain tar, a header
// member with nothing after it, a block member shorter than its header
// says or with a bad CRC: errors, not a blocked layer. (Bytes between block
// members are copied, not read: the caller's digest check covers them.)
func TestDehydrateRefusesWhatIsNotAStandardLayer(t *testing.T) {
	_, std, _, err := splitBytes(t, makeTar(t, reg("a", randBytes(7, 100<<10))), SplitOptions{Compression: blocks.Gzip, MinBlockSize: 64 << 10, Members: newMemStore()})
	if err != nil {
		t.Fatal(err)
	}
	parts, err := Dehydrate(context.Background(), bytes.NewReader(std), int64(len(std)), &bytes.Buffer{}, DehydrateOptions{Workers: 2})
	if err != nil || len(parts) < 2 || parts[0].Kind != PartHeader {
		t.Fatalf("parts %+v, %v", parts, err)
	}
	hdrEnd := parts[1].Offset
	_, zstd, _, err := splitBytes(t, makeTar(t, reg("a", []byte("x"))), SplitOptions{Compression: blocks.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	other := append([]byte(nil), std...)
	other[parts[1].Offset+parts[1].Size-5] ^= 1 // the block member's CRC
	for name, in := range map[string][]byte{
		"zstd":          zstd,
		"plain tar":     makeTar(t, reg("a", []byte("x"))),
		"header alone":  std[:hdrEnd],
		"block cut":     std[:parts[1].Offset+parts[1].Size/2],
		"bad block crc": other,
		"empty":         nil,
	} {
		if _, err := Dehydrate(context.Background(), bytes.NewReader(in), int64(len(in)), &bytes.Buffer{}, DehydrateOptions{Workers: 3}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestDehydrateBounds: a block member that inflates past what its header
// member gives is malformed; a layer that inflates past the budget is too
// large (the pull then reads the blocked layer).
func TestDehydrateBounds(t *testing.T) {
	zeros := make([]byte, 4<<20)
	_, std, _, err := splitBytes(t, makeTar(t, reg("big", zeros)), SplitOptions{Compression: blocks.Gzip, MinBlockSize: 64 << 10, Members: newMemStore()})
	if err != nil {
		t.Fatal(err)
	}
	defer func(n int64) { inflateFloor = n }(inflateFloor)
	inflateFloor = 1 << 20
	if _, err := Dehydrate(context.Background(), bytes.NewReader(std), int64(len(std)), &bytes.Buffer{}, DehydrateOptions{Workers: 2}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("4 MiB of zeros in a %d-byte layer, budget 1 MiB: %v, want ErrTooLarge", len(std), err)
	}
	inflateFloor = 256 << 20
	// A header member for 10 bytes, then a member of 4 KiB.
	var layer bytes.Buffer
	hrec := rawHeader(t, tar.Header{Typeflag: tar.TypeReg, Name: "f", Size: 10, Mode: 0o644})
	if err := WriteHeaderMember(&layer, blocks.Gzip, hrec); err != nil {
		t.Fatal(err)
	}
	if err := GzipMember(&layer, make([]byte, 4096), FormPieces); err != nil {
		t.Fatal(err)
	}
	if _, err := Dehydrate(context.Background(), bytes.NewReader(layer.Bytes()), int64(layer.Len()), &bytes.Buffer{}, DehydrateOptions{Workers: 1}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("block member larger than its header says: %v, want ErrMalformed", err)
	}
}

// FuzzDehydrate: any input either fails or yields parts that tile it.
func FuzzDehydrate(f *testing.F) {
	// Small blocks keep each run fast.
	tb := makeTar(f, reg("a", randBytes(8, 700)), reg("b", []byte("x")), reg("c", randBytes(9, 600)), reg("d", randBytes(10, 900)))
	res, std, _, err := splitBytes(f, tb, SplitOptions{Compression: blocks.Gzip, MinBlockSize: 512, Members: newMemStore()})
	if err != nil {
		f.Fatal(err)
	}
	seedMap := blockMapOf(res)
	f.Add(std)
	f.Add(std[:len(std)/2])
	f.Fuzz(func(t *testing.T, in []byte) {
		// Without a block map and with the seed's (whose entries may name
		// members of the fuzzed input).
		for _, known := range []map[digest.Digest]digest.Digest{nil, seedMap} {
			parts, err := Dehydrate(context.Background(), bytes.NewReader(in), int64(len(in)), &bytes.Buffer{}, DehydrateOptions{Workers: 2, Known: known})
			if err != nil {
				continue
			}
			var off int64
			for _, p := range parts {
				if p.Offset != off || p.Size < 0 {
					t.Fatalf("part %+v at %d", p, off)
				}
				off += p.Size
			}
			if off != int64(len(in)) {
				t.Fatalf("parts cover %d of %d bytes", off, len(in))
			}
		}
	})
}
