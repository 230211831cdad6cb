package layer

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

var compressions = []blocks.Compression{blocks.Gzip, blocks.Zstd}

const testMin = 4096

// decompress decodes a whole layer with a stock reader (every member/frame).
func decompress(t testing.TB, c blocks.Compression, b []byte) []byte {
	t.Helper()
	var r io.Reader
	if c == blocks.Zstd {
		d, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r = d
	} else {
		g, err := stdgzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		r = g
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompress %s layer: %v", c, err)
	}
	return out
}

// list returns the entry names of a compressed layer, as `tar tzf` would.
func list(t testing.TB, c blocks.Compression, b []byte) []string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(decompress(t, c, b)))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		names = append(names, h.Name)
	}
}

type conformanceCase struct {
	name     string
	tar      []byte
	imported []string
	blocks   []string // paths expected to become blocks, in order
}

func conformanceCases(t testing.TB) []conformanceCase {
	jar := randBytes(1, 300_000)
	long := strings.Repeat("very-long-directory-name/", 6) + "lib.jar"
	pad := func(b []byte) []byte { return append(b, make([]byte, 10*512)...) }
	epoch := time.Unix(1700000000, 0)
	xattr := reg("usr/bin/ping", randBytes(7, 9000))
	xattr.hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00"}
	gnu := reg(strings.Repeat("g", 120)+"/big.bin", randBytes(8, 20000))
	gnu.hdr.Format = tar.FormatGNU
	gnuSmall := reg(strings.Repeat("h", 130)+".txt", []byte("gnu long name, small"))
	gnuSmall.hdr.Format = tar.FormatGNU
	owner := reg("other/place/copy.jar", jar)
	owner.hdr.Uid, owner.hdr.Gid, owner.hdr.ModTime, owner.hdr.Mode = 1000, 1000, epoch, 0o600
	var many []entry
	for i := range 600 {
		many = append(many, reg("etc/small/"+strings.Repeat("f", i%50)+string(rune('a'+i%26))+itoa(i), randBytes(uint64(100+i), 2500)))
	}
	many = append(many, reg("after/many.jar", randBytes(9, 50000)))
	many = append(many, reg("after/tail.txt", []byte("tail")))

	return []conformanceCase{
		{name: "several entries", tar: makeTar(t, dir("app/"), reg("app/a.txt", []byte("hello")), reg("app/libs/a.jar", jar), reg("app/b.txt", []byte("world"))),
			blocks: []string{"app/libs/a.jar"}},
		{name: "block first and last", tar: makeTar(t, reg("first.bin", randBytes(2, 5000)), reg("mid.txt", []byte("m")), reg("last.bin", randBytes(3, 7000))),
			blocks: []string{"first.bin", "last.bin"}},
		{name: "adjacent blocks", tar: makeTar(t, reg("a.bin", randBytes(4, 5000)), reg("b.bin", randBytes(5, 6000)), reg("c.bin", randBytes(6, 5120))),
			blocks: []string{"a.bin", "b.bin", "c.bin"}},
		{name: "whiteouts", tar: makeTar(t, dir("var/"), reg("var/.wh.x", nil), reg("var/lib/.wh..wh..opq", nil), reg("var/lib/new.jar", jar)),
			blocks: []string{"var/lib/new.jar"}},
		{name: "hard links and symlinks", tar: makeTar(t, reg("opt/a.jar", jar), hardlink("opt/b.jar", "opt/a.jar"), symlink("opt/c.jar", "a.jar"), symlink("opt/abs", "/etc/passwd"), reg("opt/d.txt", []byte("d"))),
			blocks: []string{"opt/a.jar"}},
		{name: "pax long name and xattrs", tar: makeTar(t, reg(long, jar), xattr, reg(strings.Repeat("x", 150), []byte("small, long name"))),
			blocks: []string{long, "usr/bin/ping"}},
		{name: "gnu long names", tar: makeTar(t, gnu, gnuSmall), blocks: []string{gnu.hdr.Name}},
		{name: "empty files and 512 multiples", tar: makeTar(t, reg("empty", nil), reg("x512", randBytes(10, 512*16)), reg("x1024", randBytes(11, 1024)), reg("empty2", nil)),
			blocks: []string{"x512"}},
		{name: "min block size boundary", tar: makeTar(t, reg("exact", randBytes(12, testMin)), reg("one-less", randBytes(13, testMin-1))),
			blocks: []string{"exact"}},
		{name: "imported small file", tar: makeTar(t, reg("srv/imported.cfg", []byte("tiny but imported")), reg("srv/plain.cfg", []byte("tiny")), reg("srv/empty-imported", nil)),
			imported: []string{"srv/imported.cfg", "srv/empty-imported"}, blocks: []string{"srv/imported.cfg"}},
		{name: "same content two paths", tar: makeTar(t, reg("a/lib.jar", jar), owner), blocks: []string{"a/lib.jar", "other/place/copy.jar"}},
		{name: "trailing zero blocks", tar: pad(makeTar(t, reg("z.bin", randBytes(14, 9999)), reg("z.txt", []byte("z")))), blocks: []string{"z.bin"}},
		{name: "trailing zero blocks after block", tar: pad(makeTar(t, reg("z.bin", randBytes(15, 9999)))), blocks: []string{"z.bin"}},
		{name: "no blocks", tar: makeTar(t, dir("etc/"), reg("etc/hosts", []byte("127.0.0.1 localhost\n"))), blocks: nil},
		{name: "verbatim cap", tar: makeTar(t, many...), blocks: []string{"after/many.jar"}},
		{name: "pax global header", tar: makeTar(t, entry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "git archive writes one of these"}}},
			reg("src/a.bin", randBytes(16, 8000)), reg("src/b.txt", []byte("b"))), blocks: []string{"src/a.bin"}},
		{name: "old regular typeflag NUL", tar: oldRegular(t, makeTar(t, reg("old/a.bin", randBytes(17, 6000)), reg("old/b.txt", []byte("b")))), blocks: []string{"old/a.bin"}},
	}
}

// oldRegular rewrites every typeflag '0' of a USTAR tar to '\x00' (the
// pre-POSIX regular file) and fixes the header checksums.
func oldRegular(t testing.TB, tarb []byte) []byte {
	b := append([]byte{}, tarb...)
	for off := 0; off+512 <= len(b); {
		h := b[off : off+512]
		if h[0] == 0 {
			break
		}
		size, err := strconv.ParseInt(strings.TrimRight(string(h[124:135]), "\x00 "), 8, 64)
		if err != nil {
			t.Fatal(err)
		}
		if h[156] == '0' {
			h[156] = 0
			copy(h[148:156], "        ")
			var sum int
			for _, c := range h {
				sum += int(c)
			}
			copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
		}
		off += 512 + int((size+511)/512*512)
	}
	return b
}

func itoa(i int) string {
	const d = "0123456789"
	if i < 10 {
		return d[i : i+1]
	}
	return itoa(i/10) + d[i%10:i%10+1]
}

func TestConformance(t *testing.T) {
	for _, c := range compressions {
		for _, tc := range conformanceCases(t) {
			t.Run(string(c)+"/"+tc.name, func(t *testing.T) {
				ms := newMemStore()
				imported := map[string]bool{}
				for _, n := range tc.imported {
					imported[n] = true
				}
				res, std, blk, err := splitBytes(t, tc.tar, SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms,
					IsImported: func(n string) bool { return imported[n] }})
				if err != nil {
					t.Fatalf("Split: %v", err)
				}
				// The diffID is unchanged and the standard layer decompresses to the input.
				if res.DiffID != sha(tc.tar) {
					t.Errorf("DiffID %s, want %s", res.DiffID, sha(tc.tar))
				}
				if !bytes.Equal(decompress(t, c, std), tc.tar) {
					t.Fatalf("standard layer does not decompress to the input tar")
				}
				if res.Standard.Digest != sha(std) || res.Standard.Size != int64(len(std)) || res.Standard.MediaType != LayerMediaType(c) {
					t.Errorf("Standard descriptor %+v does not describe the bytes written", res.Standard)
				}
				if res.Blocked.Digest != sha(blk) || res.Blocked.Size != int64(len(blk)) {
					t.Errorf("Blocked descriptor %+v does not describe the bytes written", res.Blocked)
				}
				var got []string
				for _, b := range res.Blocks {
					got = append(got, b.Path)
				}
				if strings.Join(got, ",") != strings.Join(tc.blocks, ",") {
					t.Fatalf("blocks %q, want %q", got, tc.blocks)
				}
				if len(tc.blocks) == 0 {
					if res.Blocked.Digest != res.Standard.Digest || !bytes.Equal(std, blk) {
						t.Errorf("without blocks the blocked layer must be the standard layer")
					}
				}

				// The blocked layer lists stubs where the blocks were.
				names := list(t, c, blk)
				stdNames := list(t, c, std)
				if len(names) != len(stdNames) {
					t.Fatalf("blocked layer has %d entries, standard %d", len(names), len(stdNames))
				}
				isBlock := map[string]bool{}
				for _, b := range tc.blocks {
					isBlock[b] = true
				}
				for i, n := range stdNames {
					want := n
					if isBlock[n] {
						want, _ = StubName(n)
					}
					if names[i] != want {
						t.Errorf("blocked entry %d is %q, want %q", i, names[i], want)
					}
				}

				// Each block member holds the file's bytes + padding, and the
				// block digest is what sha256sum prints for the file.
				for _, b := range res.Blocks {
					if b.Member.MediaType != c.MemberMediaType() || b.Member.Annotations[blocks.AnnotationBlockDigest] != b.Raw.Digest.String() {
						t.Errorf("block %s: member descriptor %+v", b.Path, b.Member)
					}
					data := decompress(t, c, ms.blobs[b.Member.Digest])
					if int64(len(data)) != (b.Raw.Size+511)/512*512 || sha(data[:b.Raw.Size]) != b.Raw.Digest {
						t.Errorf("block %s: member does not hold the block and its padding", b.Path)
					}
				}

				// ReadStubs sees the same blocks.
				stubs, err := ReadStubs(context.Background(), bytes.NewReader(blk))
				if err != nil {
					t.Fatalf("ReadStubs: %v", err)
				}
				if len(stubs) != len(res.Blocks) {
					t.Fatalf("ReadStubs found %d stubs, want %d", len(stubs), len(res.Blocks))
				}
				for i, s := range stubs {
					if s.Path != res.Blocks[i].Path || s.Stub.Block != res.Blocks[i].Raw || s.Stub.Member.Digest != res.Blocks[i].Member.Digest {
						t.Errorf("stub %d: %+v, want block %+v", i, s, res.Blocks[i])
					}
				}
				// Consecutive stubs share a stub member; a verbatim entry
				// between two blocks ends it.
				pos := map[string]int{}
				for i, n := range stdNames {
					pos[n] = i
				}
				for i := 1; i < len(stubs); i++ {
					adjacent := pos[stubs[i].Path] == pos[stubs[i-1].Path]+1
					if shared := stubs[i].Offset == stubs[i-1].Offset; shared != adjacent {
						t.Errorf("stubs %s and %s: same stub member %v, adjacent blocks %v", stubs[i-1].StubPath, stubs[i].StubPath, shared, adjacent)
					}
				}

				// Hydrate gives the exact standard layer.
				var out bytes.Buffer
				if err := Hydrate(context.Background(), bytes.NewReader(blk), &out, memberDescs(res), ms, res.Standard); err != nil {
					t.Fatalf("Hydrate: %v", err)
				}
				if !bytes.Equal(out.Bytes(), std) {
					t.Fatalf("hydrated layer differs from the standard layer")
				}

				// A second split reuses the stored members: nothing is pushed and
				// the layers come out the same.
				pushes := ms.pushes
				res2, std2, blk2, err := splitBytes(t, tc.tar, SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms,
					IsImported: func(n string) bool { return imported[n] }})
				if err != nil {
					t.Fatalf("second Split: %v", err)
				}
				if ms.pushes != pushes || !bytes.Equal(std, std2) || !bytes.Equal(blk, blk2) || res2.Standard.Digest != res.Standard.Digest {
					t.Errorf("second split: %d new pushes, standard equal %v, blocked equal %v", ms.pushes-pushes, bytes.Equal(std, std2), bytes.Equal(blk, blk2))
				}
			})
		}
	}
}

func TestSameContentPushedOnce(t *testing.T) {
	jar := randBytes(20, 100_000)
	other := reg("b/copy.jar", jar)
	other.hdr.Uid, other.hdr.ModTime = 42, time.Unix(1234567890, 0)
	tarb := makeTar(t, reg("a/lib.jar", jar), other)
	for _, c := range compressions {
		t.Run(string(c), func(t *testing.T) {
			ms := newMemStore()
			res, _, _, err := splitBytes(t, tarb, SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms})
			if err != nil {
				t.Fatal(err)
			}
			if ms.pushes != 1 {
				t.Errorf("Push called %d times, want 1", ms.pushes)
			}
			if len(res.Blocks) != 2 || res.Blocks[0].Member.Digest != res.Blocks[1].Member.Digest || res.Blocks[0].Raw != res.Blocks[1].Raw {
				t.Errorf("blocks %+v: want one block and one member at two paths", res.Blocks)
			}
			// The member depends only on the bytes: another layer gets the same one.
			ms2 := newMemStore()
			res2, _, _, err := splitBytes(t, makeTar(t, reg("elsewhere/x.jar", jar)), SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms2})
			if err != nil {
				t.Fatal(err)
			}
			if res2.Blocks[0].Member.Digest != res.Blocks[0].Member.Digest {
				t.Errorf("member differs across layers: %s vs %s", res2.Blocks[0].Member.Digest, res.Blocks[0].Member.Digest)
			}
		})
	}
}

func TestSplitNonZeroPaddingStaysVerbatim(t *testing.T) {
	tarb := makeTar(t, reg("odd.bin", randBytes(30, 5000)), reg("x.txt", []byte("x")))
	tarb[512+5000] = 0xff // first padding byte of odd.bin
	for _, c := range compressions {
		res, std, blk, err := splitBytes(t, tarb, SplitOptions{Compression: c, MinBlockSize: testMin, Members: newMemStore()})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Blocks) != 0 || !bytes.Equal(decompress(t, c, std), tarb) || !bytes.Equal(std, blk) {
			t.Errorf("%s: a file with non-zero padding must stay verbatim, byte for byte", c)
		}
	}
}

func TestSplitRefusesReservedContent(t *testing.T) {
	for _, size := range []int{0, 5000} {
		content := append([]byte(blocks.StubMagic), randBytes(31, size)...)
		tarb := makeTar(t, reg("app/sneaky", content))
		for _, c := range compressions {
			_, _, _, err := splitBytes(t, tarb, SplitOptions{Compression: c, MinBlockSize: testMin, Members: newMemStore()})
			if !errors.Is(err, ErrReservedContent) || !strings.Contains(err.Error(), "app/sneaky") {
				t.Errorf("%s size %d: got %v, want ErrReservedContent naming app/sneaky", c, size, err)
			}
		}
	}
}

func TestSplitRefusesUnsafePaths(t *testing.T) {
	for _, tarb := range [][]byte{
		makeTar(t, reg("../escape", []byte("x"))),
		makeTar(t, reg("/abs/file", []byte("x"))),
		makeTar(t, symlink("lib", "/etc"), reg("lib/passwd", []byte("x"))),
		makeTar(t, hardlink("h", "../../etc/shadow")),
	} {
		_, _, _, err := splitBytes(t, tarb, SplitOptions{MinBlockSize: testMin, Members: newMemStore()})
		if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("got %v, want ErrUnsafePath", err)
		}
	}
}

func TestSplitRefusesBadTar(t *testing.T) {
	tarb := makeTar(t, reg("a.bin", randBytes(32, 9000)))
	for _, cut := range []int{100, 512 + 4000} {
		_, _, _, err := splitBytes(t, tarb[:cut], SplitOptions{MinBlockSize: testMin, Members: newMemStore()})
		if err == nil {
			t.Errorf("tar cut at %d: Split succeeded", cut)
		}
	}
}

// tamper builds a blocked layer by hand from members.
type tamper struct {
	c   blocks.Compression
	buf bytes.Buffer
}

func (tm *tamper) verbatim(t testing.TB, raw []byte) *tamper {
	k, err := newCompressor(tm.c)
	if err != nil {
		t.Fatal(err)
	}
	w := k.begin(&tm.buf)
	w.Write(raw)
	w.Close()
	return tm
}

func (tm *tamper) stub(t testing.TB, name string, s blocks.Stub) *tamper {
	e, err := stubEntryNamed(name, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm.verbatim(t, e)
}

func TestHydrateTamper(t *testing.T) {
	jar := randBytes(40, 20000)
	for _, c := range compressions {
		t.Run(string(c), func(t *testing.T) {
			ms := newMemStore()
			tarb := makeTar(t, symlink("lib", "/etc"), reg("app/a.jar", jar), reg("app/b.txt", []byte("b")))
			res, std, blk, err := splitBytes(t, tarb, SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms})
			if err != nil {
				t.Fatal(err)
			}
			members := memberDescs(res)
			b := res.Blocks[0]
			hdrOf := func(name string, size int64) []byte {
				return rawHeader(t, tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644})
			}
			good := blocks.Stub{Block: b.Raw, Member: blocks.Ref{Digest: b.Member.Digest, Size: b.Member.Size}, Header: hdrOf("app/a.jar", b.Raw.Size)}
			eoa := make([]byte, 1024)
			hydrate := func(layer []byte, members []ocispec.Descriptor, f MemberFetcher) error {
				return Hydrate(context.Background(), bytes.NewReader(layer), io.Discard, members, f, res.Standard)
			}
			withStub := func(name string, s blocks.Stub, before ...entry) []byte {
				tm := &tamper{c: c}
				if len(before) > 0 {
					raw := makeTar(t, before...)
					tm.verbatim(t, raw[:len(raw)-1024])
				}
				return tm.stub(t, name, s).verbatim(t, eoa).buf.Bytes()
			}
			// The hand-built layer with a good stub is fine apart from the final digest.
			if err := hydrate(withStub("app/.import.a.jar", good), members, ms); !errors.Is(err, ErrMismatch) {
				t.Fatalf("hand-built control: got %v, want only ErrMismatch at the end", err)
			}

			cases := []struct {
				name  string
				layer []byte
				mem   []ocispec.Descriptor
				fetch MemberFetcher
				want  error
				text  string
			}{
				{name: "member bytes do not match", layer: blk, mem: members, want: ErrMismatch,
					fetch: fetchFunc(func(d ocispec.Descriptor) (io.ReadCloser, error) {
						return io.NopCloser(bytes.NewReader(randBytes(41, int(d.Size)))), nil
					})},
				{name: "member short", layer: blk, mem: members, want: ErrMismatch,
					fetch: fetchFunc(func(d ocispec.Descriptor) (io.ReadCloser, error) {
						return io.NopCloser(bytes.NewReader(ms.blobs[d.Digest][:d.Size-1])), nil
					})},
				{name: "member not listed", layer: blk, mem: nil, fetch: ms, want: ErrNotListed,
					text: "stub app/.import.a.jar: block " + b.Raw.Digest.String() + " is not listed in the block set"},
				{name: "member listed with another size", layer: blk, fetch: ms, want: ErrNotListed,
					mem: []ocispec.Descriptor{{MediaType: b.Member.MediaType, Digest: b.Member.Digest, Size: b.Member.Size + 1}}},
				{name: "blocked layer cut short", layer: blk[:len(blk)-7], mem: members, fetch: ms, want: ErrMalformed},
				{name: "blocked layer cut in a member", layer: blk[:len(blk)/2], mem: members, fetch: ms, want: ErrMalformed},
				{name: "trailing garbage", layer: append(append([]byte{}, blk...), "garbage"...), mem: members, fetch: ms, want: ErrMalformed},
				{name: "empty layer", layer: nil, mem: members, fetch: ms, want: ErrMalformed},
				{name: "truncated stub", mem: members, fetch: ms, want: ErrBadStub, layer: func() []byte {
					doc, _ := EncodeStub(good)
					raw := rawHeader(t, tar.Header{Typeflag: tar.TypeReg, Name: "app/.import.a.jar", Size: int64(len(doc) - 20), Mode: 0o644})
					raw = append(raw, doc[:len(doc)-20]...)
					raw = append(raw, make([]byte, (512-len(raw)%512)%512)...)
					return (&tamper{c: c}).verbatim(t, raw).verbatim(t, eoa).buf.Bytes()
				}()},
				{name: "stub entry cut in its member", mem: members, fetch: ms, want: ErrMalformed, layer: func() []byte {
					e, _ := stubEntry("app/a.jar", good)
					return (&tamper{c: c}).verbatim(t, e[:len(e)-600]).verbatim(t, eoa).buf.Bytes()
				}()},
				{name: "stub not alone in its member", mem: members, fetch: ms, want: ErrMalformed, layer: func() []byte {
					e, _ := stubEntry("app/a.jar", good)
					return (&tamper{c: c}).verbatim(t, append(e, eoa...)).buf.Bytes()
				}()},
				{name: "stub after another entry in a member", mem: members, fetch: ms, want: ErrMalformed, layer: func() []byte {
					e, _ := stubEntry("app/a.jar", good)
					raw := makeTar(t, reg("x", []byte("x")))
					return (&tamper{c: c}).verbatim(t, append(raw[:1024], e...)).verbatim(t, eoa).buf.Bytes()
				}()},
				{name: "header size does not match block size", mem: members, fetch: ms, want: ErrBadStub,
					layer: withStub("app/.import.a.jar", blocks.Stub{Block: good.Block, Member: good.Member, Header: hdrOf("app/a.jar", b.Raw.Size+1)})},
				{name: "header not a regular file", mem: members, fetch: ms, want: ErrBadStub,
					layer: withStub("app/.import.a.jar", blocks.Stub{Block: good.Block, Member: good.Member,
						Header: rawHeader(t, tar.Header{Typeflag: tar.TypeSymlink, Name: "app/a.jar", Linkname: "x"})})},
				{name: "stub name does not match header", mem: members, fetch: ms, want: ErrBadStub,
					layer: withStub("app/.import.other.jar", good)},
				{name: "stub name without prefix", mem: members, fetch: ms, want: ErrBadStub,
					layer: withStub("app/a.jar", good)},
				{name: "path escapes with ..", mem: members, fetch: ms, want: ErrUnsafePath,
					layer: withStub("../.import.x", blocks.Stub{Block: good.Block, Member: good.Member, Header: hdrOf("../x", b.Raw.Size)})},
				{name: "absolute path", mem: members, fetch: ms, want: ErrUnsafePath,
					layer: withStub("/abs/.import.x", blocks.Stub{Block: good.Block, Member: good.Member, Header: hdrOf("/abs/x", b.Raw.Size)})},
				{name: "through a symlink", mem: members, fetch: ms, want: ErrUnsafePath,
					layer: withStub("lib/.import.passwd", blocks.Stub{Block: good.Block, Member: good.Member, Header: hdrOf("lib/passwd", b.Raw.Size)}, symlink("lib", "/etc"))},
				{name: "verbatim entry through a symlink", mem: members, fetch: ms, want: ErrUnsafePath,
					layer: (&tamper{c: c}).verbatim(t, makeTar(t, symlink("lib", "/etc"), reg("lib/passwd", []byte("x")))).buf.Bytes()},
				{name: "hard link escapes", mem: members, fetch: ms, want: ErrUnsafePath,
					layer: (&tamper{c: c}).verbatim(t, makeTar(t, hardlink("h", "../etc/shadow"))).buf.Bytes()},
				{name: "stub content in a plain member", mem: members, fetch: ms, want: ErrMalformed,
					layer: (&tamper{c: c}).verbatim(t, makeTar(t, reg("a", []byte("x")), reg("b", []byte(blocks.StubMagic+"{}\n")))).buf.Bytes()},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					err := hydrate(tc.layer, tc.mem, tc.fetch)
					t.Log(err)
					if !errors.Is(err, tc.want) {
						t.Fatalf("got %v, want %v", err, tc.want)
					}
					if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
						t.Errorf("error %q does not say %q", err, tc.text)
					}
				})
			}
			// The untampered layer still hydrates.
			var out bytes.Buffer
			if err := Hydrate(context.Background(), bytes.NewReader(blk), &out, members, ms, res.Standard); err != nil || !bytes.Equal(out.Bytes(), std) {
				t.Fatalf("control: %v", err)
			}
			// A wrong want fails.
			wrong := res.Standard
			wrong.Digest = digest.FromString("other")
			if err := Hydrate(context.Background(), bytes.NewReader(blk), io.Discard, members, ms, wrong); !errors.Is(err, ErrMismatch) {
				t.Errorf("wrong want: got %v", err)
			}
		})
	}
}

// Sparse entries (written by GNU tar 1.34, --sparse, GNU and PAX formats) are
// never blocks and are kept byte for byte; a block after them still works.
func TestSparseEntriesVerbatim(t *testing.T) {
	for _, file := range []string{"testdata/gnu-sparse.tar", "testdata/pax-sparse.tar"} {
		tarb, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range compressions {
			ms := newMemStore()
			res, std, blk, err := splitBytes(t, tarb, SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms})
			if err != nil {
				t.Fatalf("%s %s: %v", file, c, err)
			}
			if len(res.Blocks) != 1 || res.Blocks[0].Path != "after.bin" {
				t.Errorf("%s %s: blocks %+v, want after.bin only", file, c, res.Blocks)
			}
			if !bytes.Equal(decompress(t, c, std), tarb) {
				t.Fatalf("%s %s: standard layer differs from the input", file, c)
			}
			var out bytes.Buffer
			if err := Hydrate(context.Background(), bytes.NewReader(blk), &out, memberDescs(res), ms, res.Standard); err != nil || !bytes.Equal(out.Bytes(), std) {
				t.Fatalf("%s %s: hydrate: %v", file, c, err)
			}
		}
	}
}

func TestCanceled(t *testing.T) {
	tarb := makeTar(t, reg("a.bin", randBytes(70, 9000)))
	ms := newMemStore()
	res, _, blk, err := splitBytes(t, tarb, SplitOptions{MinBlockSize: testMin, Members: ms})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Hydrate(ctx, bytes.NewReader(blk), io.Discard, memberDescs(res), ms, res.Standard); !errors.Is(err, context.Canceled) {
		t.Errorf("Hydrate: got %v, want context.Canceled", err)
	}
	if _, err := Split(ctx, bytes.NewReader(tarb), io.Discard, io.Discard, SplitOptions{Members: ms}); !errors.Is(err, context.Canceled) {
		t.Errorf("Split: got %v, want context.Canceled", err)
	}
}
