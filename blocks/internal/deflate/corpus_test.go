package deflate

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// splitMix64 is the SplitMix64 generator, written out here (not taken from
// math/rand) so that the generated corpus, and with it the golden digests,
// cannot change with a Go release.
type splitMix64 uint64

func (s *splitMix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// intn returns a number in [0, n), n > 0. The modulo bias does not matter:
// only determinism does.
func (s *splitMix64) intn(n int) int { return int(s.next() % uint64(n)) }

var corpusWords = []string{
	"java/lang/", "Object", "String", "(Ljava/lang/String;)V", "init", "<clinit>",
	"libjvm.so", "GLIBC_2.2.5", ".text", ".rodata", "__cxa_finalize", " ", "\n",
	"public ", "static ", "final ", "class ", "return ", "sun/security/", "0x",
}

// genCorpus returns n bytes of deterministic, compressible, binary-like data
// for the given seed: back-references at distances up to 64 KiB (some beyond
// the 32 KiB window) with mutations, zero runs, low- and high-entropy
// literals, little-endian tables, symbol-like words and x86-like code. It
// exercises short, long, near and far matches, lazy matching and the
// window shift.
func genCorpus(seed uint64, n int) []byte {
	r := splitMix64(seed)
	out := make([]byte, 0, n+512)
	for len(out) < n {
		switch r.intn(10) {
		case 0, 1, 2: // copy from earlier, often with a mutation
			if len(out) < 4 {
				continue
			}
			var dist int
			switch r.intn(4) {
			case 0:
				dist = 1 + r.intn(min(len(out), 16))
			case 1:
				dist = 1 + r.intn(min(len(out), 4096))
			default:
				dist = 1 + r.intn(min(len(out), 65536))
			}
			l := 3 + r.intn(40)
			if r.intn(8) == 0 {
				l = 3 + r.intn(600)
			}
			start := len(out) - dist
			for i := 0; i < l; i++ {
				out = append(out, out[start+i])
			}
			if r.intn(3) == 0 {
				out[len(out)-1-r.intn(l)] ^= byte(1 + r.intn(255))
			}
		case 3: // low-entropy literals
			l := 1 + r.intn(64)
			for i := 0; i < l; i++ {
				out = append(out, "etaoin shrdlu\x00\x01\xff"[r.intn(16)])
			}
		case 4: // high-entropy literals
			l := 1 + r.intn(32)
			for i := 0; i < l; i++ {
				out = append(out, byte(r.next()))
			}
		case 5: // zero run
			out = append(out, make([]byte, 1+r.intn(512))...)
		case 6: // little-endian table of increasing values
			v := uint32(r.next())
			step := uint32(1 + r.intn(64))
			for i := r.intn(32); i >= 0; i-- {
				out = binary.LittleEndian.AppendUint32(out, v)
				v += step
			}
		case 7, 8: // words
			for i := r.intn(12); i >= 0; i-- {
				out = append(out, corpusWords[r.intn(len(corpusWords))]...)
			}
		case 9: // x86-like code: a few opcodes and random displacements
			for i := r.intn(16); i >= 0; i-- {
				out = append(out, []byte{0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x85, 0xc3, 0x90}[r.intn(8)])
				out = binary.LittleEndian.AppendUint32(out, uint32(r.intn(1<<16)))
			}
		}
	}
	return out[:n]
}

// readPrefix returns at most max bytes of the file, or nil if it cannot be
// read (the corpus uses what the machine has).
func readPrefix(path string, max int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max))
	if err != nil {
		return nil
	}
	return b
}

// systemFiles returns up to count regular files of at least minSize bytes
// from dir, in name order, each read to at most max bytes.
func systemFiles(dir string, count int, minSize, max int64) [][]byte {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	var out [][]byte
	for _, e := range ents {
		if len(out) == count {
			break
		}
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Size() < minSize {
			continue
		}
		if b := readPrefix(filepath.Join(dir, e.Name()), max); len(b) > 0 {
			out = append(out, b)
		}
	}
	return out
}

// tarMix returns a tar stream of the given files' contents interleaved with
// generated ones: headers, padding and mixed content as in a layer.
func tarMix(t testing.TB, files [][]byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, f := range files {
		for j, b := range [][]byte{f, genCorpus(uint64(100+i), 1+len(f)/7), []byte("#!/bin/sh\nexec java -jar app.jar \"$@\"\n")} {
			hdr := &tar.Header{Name: filepath.Join("usr/lib/jvm", string(rune('a'+i)), string(rune('0'+j))), Mode: 0o755, Size: int64(len(b)), Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
