package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

func testStub(t testing.TB) blocks.Stub {
	return blocks.Stub{
		Block:  blocks.Ref{Digest: digest.FromString("block"), Size: 5000},
		Member: blocks.Ref{Digest: digest.FromString("member"), Size: 4000},
		Header: rawHeader(t, tar.Header{Typeflag: tar.TypeReg, Name: "app/a.jar", Size: 5000, Mode: 0o644}),
	}
}

func TestStubName(t *testing.T) {
	for name, want := range map[string]string{
		"app/libs/a.jar":   "app/libs/.import.a.jar",
		"a.jar":            ".import.a.jar",
		"./opt/x":          "./opt/.import.x",
		"deep/er/dir/file": "deep/er/dir/.import.file",
	} {
		if got, err := StubName(name); err != nil || got != want {
			t.Errorf("StubName(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := StubName("dir/"); !errors.Is(err, ErrBadStub) {
		t.Errorf("StubName(dir/): %v", err)
	}
}

func TestStubRoundTrip(t *testing.T) {
	s := testStub(t)
	doc, err := EncodeStub(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(doc), blocks.StubMagic) || !strings.HasSuffix(string(doc), "}\n") {
		t.Fatalf("stub document %q", doc)
	}
	got, err := ParseStub(doc)
	if err != nil {
		t.Fatal(err)
	}
	if got.Block != s.Block || got.Member != s.Member || !bytes.Equal(got.Header, s.Header) {
		t.Errorf("round trip: %+v", got)
	}
	h, err := ParseStubHeader(got.Header, got.Block.Size)
	if err != nil || h.Name != "app/a.jar" {
		t.Errorf("ParseStubHeader: %v %v", h, err)
	}
}

// The stub document has one exact form (docs/FORMAT.md section 5).
func TestStubDocumentGolden(t *testing.T) {
	s := testStub(t)
	doc, err := EncodeStub(s)
	if err != nil {
		t.Fatal(err)
	}
	want := blocks.StubMagic + `{"b":{"d":"` + s.Block.Digest.String() + `","s":5000},"m":{"d":"` + s.Member.Digest.String() +
		`","s":4000},"h":"` + base64.StdEncoding.EncodeToString(s.Header) + `"}` + "\n"
	if string(doc) != want {
		t.Errorf("stub document\n%s\nwant\n%s", doc, want)
	}
}

func TestParseStubRejects(t *testing.T) {
	s := testStub(t)
	doc, _ := EncodeStub(s)
	body := strings.TrimSuffix(strings.TrimPrefix(string(doc), blocks.StubMagic), "\n")
	bad := map[string]string{
		"no magic":        body + "\n",
		"truncated":       string(doc[:len(doc)-10]),
		"no newline":      blocks.StubMagic + body,
		"unknown field":   blocks.StubMagic + strings.Replace(body, `{"b"`, `{"extra":1,"b"`, 1) + "\n",
		"old long keys":   blocks.StubMagic + `{"block":{"digest":"` + s.Block.Digest.String() + `","size":5000},"member":{"digest":"` + s.Member.Digest.String() + `","size":4000},"header":"` + base64.StdEncoding.EncodeToString(s.Header) + `"}` + "\n",
		"upper-case key":  blocks.StubMagic + strings.Replace(body, `{"b"`, `{"B"`, 1) + "\n",
		"duplicate key":   blocks.StubMagic + strings.Replace(body, `{"b":`, `{"b":{"d":"sha256:`+strings.Repeat("0", 64)+`","s":1},"b":`, 1) + "\n",
		"whitespace":      blocks.StubMagic + strings.Replace(body, `{"b":`, `{ "b":`, 1) + "\n",
		"key order":       blocks.StubMagic + strings.Replace(body, `{"d":"`+s.Block.Digest.String()+`","s":5000}`, `{"s":5000,"d":"`+s.Block.Digest.String()+`"}`, 1) + "\n",
		"two objects":     blocks.StubMagic + body + body + "\n",
		"not json":        blocks.StubMagic + "hello\n",
		"empty":           "",
		"bad digest":      blocks.StubMagic + strings.Replace(body, s.Block.Digest.String(), "sha256:1234", 1) + "\n",
		"sha512":          blocks.StubMagic + strings.Replace(body, s.Block.Digest.String(), "sha512:"+strings.Repeat("ab", 64), 1) + "\n",
		"zero size":       blocks.StubMagic + strings.Replace(body, `"s":5000`, `"s":0`, 1) + "\n",
		"negative member": blocks.StubMagic + strings.Replace(body, `"s":4000`, `"s":-1`, 1) + "\n",
		"null":            blocks.StubMagic + "null\n",
		"header not 512":  blocks.StubMagic + `{"b":{"d":"` + s.Block.Digest.String() + `","s":1},"m":{"d":"` + s.Member.Digest.String() + `","s":1},"h":"AAAA"}` + "\n",
	}
	for name, in := range bad {
		if _, err := ParseStub([]byte(in)); !errors.Is(err, ErrBadStub) {
			t.Errorf("%s: got %v, want ErrBadStub", name, err)
		}
	}
}

func TestParseStubHeaderRejects(t *testing.T) {
	good := rawHeader(t, tar.Header{Typeflag: tar.TypeReg, Name: "a", Size: 10})
	for name, tc := range map[string]struct {
		raw  []byte
		size int64
	}{
		"size mismatch":  {good, 11},
		"trailing bytes": {append(append([]byte{}, good...), make([]byte, 512)...), 10},
		"directory":      {rawHeader(t, tar.Header{Typeflag: tar.TypeDir, Name: "d/"}), 0},
		"zeros":          {make([]byte, 1024), 0},
		"garbage":        {bytes.Repeat([]byte{'x'}, 512), 10},
	} {
		if _, err := ParseStubHeader(tc.raw, tc.size); !errors.Is(err, ErrBadStub) {
			t.Errorf("%s: got %v, want ErrBadStub", name, err)
		}
	}
}

func FuzzParseStub(f *testing.F) {
	doc, _ := EncodeStub(testStub(f))
	f.Add(doc)
	f.Add([]byte(blocks.StubMagic + "{}\n"))
	f.Add([]byte(blocks.StubMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStub(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to a document that parses the same.
		again, err := EncodeStub(s)
		if err != nil {
			t.Fatalf("parsed stub does not encode: %v", err)
		}
		s2, err := ParseStub(again)
		if err != nil || s2.Block != s.Block || s2.Member != s.Member || !bytes.Equal(s2.Header, s.Header) {
			t.Fatalf("re-encoded stub differs: %v", err)
		}
		_, _ = ParseStubHeader(s.Header, s.Block.Size)
	})
}

// FuzzHydrateBlockedLayer feeds arbitrary bytes to Hydrate as a blocked
// layer. It must return (an error, nearly always) and never panic or hang.
func FuzzHydrateBlockedLayer(f *testing.F) {
	ms := newMemStore()
	var members []ocispec.Descriptor
	wants := map[blocks.Compression]ocispec.Descriptor{}
	tarb := makeTar(f, symlink("lib", "/etc"), reg("app/a.jar", randBytes(50, 6000)), reg("app/b.txt", []byte("b")), reg("c.bin", randBytes(51, 5000)), reg("d.bin", randBytes(52, 4500)))
	for _, c := range compressions {
		res, _, blk, err := splitBytes(f, tarb, SplitOptions{Compression: c, MinBlockSize: testMin, Members: ms})
		if err != nil {
			f.Fatal(err)
		}
		members = append(members, memberDescs(res)...)
		wants[c] = res.Standard
		f.Add(blk)
		f.Add(blk[:len(blk)/3])
	}
	f.Add([]byte{0x1f, 0x8b})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, c := range compressions {
			_ = Hydrate(context.Background(), bytes.NewReader(b), io.Discard, members, ms, wants[c])
		}
		stubs, serr := ReadStubs(context.Background(), bytes.NewReader(b))
		// Layout walks as ReadStubs does: the same verdict, one header and
		// one member part per stub, parts that tile from offset 0.
		_, parts, lerr := Layout(context.Background(), bytes.NewReader(b), "")
		if (serr == nil) != (lerr == nil) {
			t.Fatalf("ReadStubs: %v, Layout: %v", serr, lerr)
		}
		var off int64
		n := 0
		for _, p := range parts {
			if p.Offset != off || p.Size <= 0 {
				t.Fatalf("part %+v at %d", p, off)
			}
			off += p.Size
			if p.Kind == PartMember {
				n++
			}
		}
		if lerr == nil && n != len(stubs) {
			t.Fatalf("%d member parts for %d stubs", n, len(stubs))
		}
	})
}

// FuzzHydrateMembers fuzzes what lies inside the members: the input is cut
// at "|||" and each piece compressed as one member, so the tar and stub
// checks see well-framed but arbitrary content. Never panic or hang.
func FuzzHydrateMembers(f *testing.F) {
	ms := newMemStore()
	tarb := makeTar(f, reg("app/a.jar", randBytes(60, 6000)), reg("app/b.txt", []byte("b")))
	res, _, _, err := splitBytes(f, tarb, SplitOptions{MinBlockSize: testMin, Members: ms})
	if err != nil {
		f.Fatal(err)
	}
	b := res.Blocks[0]
	stub, err := stubEntry(b.Path, blocks.Stub{Block: b.Raw, Member: blocks.Ref{Digest: b.Member.Digest, Size: b.Member.Size},
		Header: rawHeader(f, tar.Header{Typeflag: tar.TypeReg, Name: b.Path, Size: b.Raw.Size, Mode: 0o644})})
	if err != nil {
		f.Fatal(err)
	}
	pre := makeTar(f, symlink("lib", "/etc"), reg("x", []byte("x")))
	sep := []byte("|||")
	f.Add(bytes.Join([][]byte{pre[:len(pre)-1024], stub, make([]byte, 1024)}, sep))
	f.Add(bytes.Join([][]byte{stub, stub}, sep))
	f.Add(bytes.Join([][]byte{append(append([]byte{}, stub...), stub...), pre[:1024]}, sep)) // two stubs in one member
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, c := range compressions {
			k, err := newCompressor(c)
			if err != nil {
				t.Fatal(err)
			}
			var layer bytes.Buffer
			for _, m := range bytes.Split(in, sep) {
				w := k.begin(&layer)
				w.Write(m)
				w.Close()
			}
			k.close()
			want := ocispec.Descriptor{Digest: res.Standard.Digest, Size: 1 << 20}
			_ = Hydrate(context.Background(), bytes.NewReader(layer.Bytes()), io.Discard, memberDescs(res), ms, want)
		}
	})
}
