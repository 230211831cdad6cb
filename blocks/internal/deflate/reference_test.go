package deflate

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

// These tests compare this package's output with the standard library's
// compress/flate, which runs the same algorithm as the frozen copy as long as
// go.mod pins a Go 1.26 toolchain: any speedup that changes a single output
// byte fails here. The golden digests (golden_test.go) pin the output
// independently of the toolchain.

// requireReference fails (does not skip) when the standard library is not
// Go 1.26's: compress/flate may then write other bytes, and a comparison with
// it would prove nothing, or fail for nothing.
func requireReference(t testing.TB) {
	t.Helper()
	v := runtime.Version()
	if v != "go1.26" && !strings.HasPrefix(v, "go1.26.") {
		t.Fatalf("built with %s, but the reference of these tests is Go 1.26's compress/flate: "+
			"re-pin the reference (build with Go 1.26.x, or vendor Go 1.26.8's compressor as the "+
			"reference) before trusting or changing this package", v)
	}
}

// flateWriter is what both deflate.Writer and flate.Writer offer.
type flateWriter interface {
	io.Writer
	Flush() error
	Close() error
	Reset(io.Writer)
}

// op is one step of a writing pattern: write n bytes, flush, or close the
// stream and Reset the writer to start another one in the same output.
type op struct {
	kind byte // 'w', 'f' or 'r'
	n    int
}

// opsString shortens a pattern for failure messages.
func opsString(ops []op) string {
	var b strings.Builder
	for i, o := range ops {
		if i == 40 {
			fmt.Fprintf(&b, "... (%d ops)", len(ops))
			break
		}
		if o.kind == 'w' {
			fmt.Fprintf(&b, "w%d ", o.n)
		} else {
			fmt.Fprintf(&b, "%c ", o.kind)
		}
	}
	return b.String()
}

// runOps compresses data following ops (then writes what is left and
// closes) and returns all the streams written, one after the other.
func runOps(newWriter func(io.Writer) (flateWriter, error), data []byte, ops []op) ([]byte, error) {
	var buf bytes.Buffer
	w, err := newWriter(&buf)
	if err != nil {
		return nil, err
	}
	for _, o := range ops {
		switch o.kind {
		case 'w':
			n := min(o.n, len(data))
			if _, err := w.Write(data[:n]); err != nil {
				return nil, err
			}
			data = data[n:]
		case 'f':
			if err := w.Flush(); err != nil {
				return nil, err
			}
		case 'r':
			if err := w.Close(); err != nil {
				return nil, err
			}
			w.Reset(&buf)
		}
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// compareWithReference compresses data with both compressors at level
// (with dict as the preset dictionary if not nil) following ops, and fails
// at the first differing byte.
func compareWithReference(t testing.TB, name string, level int, dict, data []byte, ops []op) {
	t.Helper()
	ours := func(w io.Writer) (flateWriter, error) {
		if dict != nil {
			return NewWriterDict(w, level, dict)
		}
		return NewWriter(w, level)
	}
	std := func(w io.Writer) (flateWriter, error) {
		if dict != nil {
			return flate.NewWriterDict(w, level, dict)
		}
		return flate.NewWriter(w, level)
	}
	got, err := runOps(ours, data, ops)
	if err != nil {
		t.Fatalf("%s level %d: %v", name, level, err)
	}
	want, err := runOps(std, data, ops)
	if err != nil {
		t.Fatalf("%s level %d: reference: %v", name, level, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s level %d (%d input bytes, dict %d bytes, ops %s): output differs from compress/flate's "+
			"at byte %d (%d bytes, want %d)", name, level, len(data), len(dict), opsString(ops), i, len(got), len(want))
	}
}

var allLevels = []int{HuffmanOnly, DefaultCompression, NoCompression, BestSpeed, 2, 3, 4, 5, 6, 7, 8, BestCompression}

// testLevels returns every level, or under -short one of each kind: stored,
// Huffman only, BestSpeed's own encoder, the lazy-free levels 2-3 (4 shares
// their code but for lazy matching), blockfile's 6 and 9.
func testLevels() []int {
	if testing.Short() {
		return []int{HuffmanOnly, NoCompression, BestSpeed, 2, 4, 6, BestCompression}
	}
	return allLevels
}

// referenceSources returns the corpus: random, zeros, repetitive text,
// generated binary-like data, real binaries and libraries, and a tar mix.
// Under -short each is cut to at most 100 KiB (still past the 64 KiB after
// which the window shifts).
func referenceSources(t *testing.T) map[string][]byte {
	limit := 5 << 20
	if testing.Short() {
		limit = 100 << 10
	}
	random := make([]byte, min(limit, 1536<<10))
	r := splitMix64(99)
	for i := range random {
		random[i] = byte(r.next())
	}
	var text []byte
	for i := 0; len(text) < min(limit, 1<<20); i++ {
		text = fmt.Appendf(text, "%d: the quick brown fox jumps over the lazy dog %d times\n", i%1000, i%7)
	}
	src := map[string][]byte{
		"random":    random,
		"zeros":     make([]byte, min(limit, 1536<<10)),
		"text":      text,
		"generated": genCorpus(7, min(limit, 2<<20)),
	}
	if b := readPrefix(runtime.GOROOT()+"/bin/go", int64(min(limit, 4<<20))); len(b) > 0 {
		src["gobinary"] = b
	} else {
		// Go test runs with a toolchain, so this is a real binary everywhere.
		t.Fatalf("no go binary at %s/bin/go for the corpus", runtime.GOROOT())
	}
	if b := readPrefix(runtime.GOROOT()+"/src/compress/flate/deflate.go", int64(limit)); len(b) > 0 {
		src["gosource"] = b
	}
	libs := systemFiles("/usr/lib/x86_64-linux-gnu", 3, 64<<10, int64(min(limit, 2<<20)))
	for i, b := range libs {
		src[fmt.Sprintf("usrlib%d", i)] = b
	}
	if len(libs) == 0 {
		t.Logf("no files in /usr/lib/x86_64-linux-gnu")
	}
	var parts [][]byte
	for _, b := range libs {
		parts = append(parts, b[:min(len(b), limit/4)])
	}
	src["tar"] = tarMix(t, append(parts, text[:min(len(text), 50000)]))
	return src
}

// shortSources are the sources of the size and dictionary sweeps under
// -short (which -race makes slow): generated data, a real binary, a tar mix.
var shortSources = map[string]bool{"generated": true, "gobinary": true, "tar": true}

// TestSameAsReference compares the output with compress/flate's on prefixes
// of every source at the sizes where deflate's limits lie, at every level,
// in one write.
func TestSameAsReference(t *testing.T) {
	requireReference(t)
	sizes := []int{0, 1, 2, 3, 4, 5, 16, 17, 128, 129, 257, 258, 259, 260, 261, 262,
		32767, 32768, 32769, 65535, 65536, 65537, 100000, 1<<20 + 3}
	for name, data := range referenceSources(t) {
		if testing.Short() && !shortSources[name] {
			continue
		}
		t.Run(name, func(t *testing.T) {
			ns := append([]int{}, sizes...)
			ns = append(ns, len(data))
			for _, n := range ns {
				if n > len(data) {
					continue
				}
				for _, level := range testLevels() {
					compareWithReference(t, fmt.Sprintf("%s[:%d]", name, n), level, nil, data[:n], nil)
				}
			}
		})
	}
}

// randomOps returns a pattern writing total bytes in random pieces (from 1
// byte to 70000, so that writes cross the window's 64 KiB buffer), flushing
// after about one in four and starting a new stream with Reset after about
// one in thirty.
func randomOps(seed uint64, total int) []op {
	r := splitMix64(seed)
	var ops []op
	for total > 0 {
		var n int
		switch r.intn(4) {
		case 0:
			n = 1 + r.intn(8)
		case 1:
			n = 1 + r.intn(600)
		default:
			n = 1 + r.intn(70000)
		}
		n = min(n, total)
		total -= n
		ops = append(ops, op{'w', n})
		switch r.intn(30) {
		case 0:
			ops = append(ops, op{kind: 'r'})
		case 1, 2, 3, 4, 5, 6, 7:
			ops = append(ops, op{kind: 'f'})
		case 8:
			ops = append(ops, op{kind: 'f'}, op{kind: 'f'})
		}
	}
	return ops
}

// TestSameAsReferenceFlushReset compares outputs written in random pieces
// with Flush at random points and Reset reuse, at every level.
func TestSameAsReferenceFlushReset(t *testing.T) {
	requireReference(t)
	for name, data := range referenceSources(t) {
		t.Run(name, func(t *testing.T) {
			data = data[:min(len(data), 1<<20)]
			for i, level := range testLevels() {
				compareWithReference(t, name, level, nil, data, randomOps(uint64(i), len(data)))
			}
		})
	}
}

// TestSameAsReferenceDict compares outputs of NewWriterDict with
// dictionaries from empty to larger than the window, with flushes and Reset
// (which puts the dictionary back).
func TestSameAsReferenceDict(t *testing.T) {
	requireReference(t)
	dictLens, restMax := []int{0, 1, 3, 100, 32767, 32768, 40000}, 300000
	if testing.Short() {
		dictLens, restMax = []int{0, 100, 32768, 40000}, 40000
	}
	for name, data := range referenceSources(t) {
		if testing.Short() && !shortSources[name] {
			continue
		}
		t.Run(name, func(t *testing.T) {
			for _, dictLen := range dictLens {
				if dictLen > len(data) {
					continue
				}
				dict, rest := data[:dictLen], data[dictLen:]
				rest = rest[:min(len(rest), restMax)]
				for i, level := range testLevels() {
					compareWithReference(t, fmt.Sprintf("%s dict %d", name, dictLen), level, dict, rest, nil)
					compareWithReference(t, fmt.Sprintf("%s dict %d", name, dictLen), level, dict, rest, randomOps(uint64(100+i), len(rest)))
				}
			}
		})
	}
}

// TestSameAsReferenceLongStream writes more than 16 MiB into one stream, so
// that the hash chains' offsets are rebased (maxHashOffset) as well as the
// window shifted many times.
func TestSameAsReferenceLongStream(t *testing.T) {
	requireReference(t)
	if testing.Short() {
		t.Skip("17 MiB at several levels; runs without -short")
	}
	data := genCorpus(11, 17<<20)
	ops := make([]op, 0, 40)
	for i := 0; i < 17; i++ {
		ops = append(ops, op{'w', 1 << 20})
		if i == 9 {
			ops = append(ops, op{kind: 'f'})
		}
	}
	for _, level := range []int{2, 4, 6, 9} {
		compareWithReference(t, "generated 17 MiB", level, nil, data, ops)
	}
	if b := readPrefix(runtime.GOROOT()+"/bin/go", 17<<20); len(b) > 16<<20 {
		compareWithReference(t, "go binary", 6, nil, b, nil)
	}
}

// FuzzSameAsReference compares outputs for any input, level, dictionary and
// pattern of writes, flushes and resets. cuts is read two bytes at a time
// (little endian): 0xffff closes the stream and resets the writer, otherwise
// the low 15 bits are a write's size and the top bit asks for a flush
// after it (64 steps at most). dictLen 0 means no dictionary, n > 0 the
// first n-1 bytes of data.
func FuzzSameAsReference(f *testing.F) {
	f.Add([]byte("hello, hello, hello world"), int8(6), uint16(0), []byte{})
	f.Add(genCorpus(1, 5000), int8(8), uint16(0), []byte{0x10, 0x80, 0xff, 0xff, 0x00, 0x01})
	f.Add(genCorpus(2, 70000), int8(6), uint16(1000), []byte{0xff, 0x7f, 0x01, 0x80})
	f.Add(make([]byte, 1000), int8(1), uint16(3), []byte{0x05, 0x80, 0x05, 0x80})
	f.Add(genCorpus(3, 3000), int8(0), uint16(0), []byte{0x00, 0x80})
	f.Add(genCorpus(4, 3000), int8(11), uint16(0), []byte{0x00, 0x08})
	f.Fuzz(func(t *testing.T, data []byte, level int8, dictLen uint16, cuts []byte) {
		requireReference(t)
		lvl := int(uint8(level)%12) - 2
		var dict []byte
		if dictLen > 0 {
			n := min(int(dictLen)-1, len(data))
			dict, data = data[:n], data[n:]
		}
		var ops []op
		// At most 64 steps: a Reset clears over a MiB of tables in each
		// compressor, and the fuzzer should spend its time on inputs.
		for len(cuts) >= 2 && len(ops) < 64 {
			v := binary.LittleEndian.Uint16(cuts)
			cuts = cuts[2:]
			if v == 0xffff {
				ops = append(ops, op{kind: 'r'})
				continue
			}
			ops = append(ops, op{'w', int(v & 0x7fff)})
			if v&0x8000 != 0 {
				ops = append(ops, op{kind: 'f'})
			}
		}
		compareWithReference(t, "fuzz", lvl, dict, data, ops)
	})
}
