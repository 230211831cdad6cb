package deflate

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
)

// goldenCase is one deterministic compression whose output's digest is
// pinned in goldenDigests.
type goldenCase struct {
	name  string
	large bool // skipped under -short
	run   func(t *testing.T) []byte
}

// compressOnce deflates data in one Write at level, with dict if not nil.
func compressOnce(t *testing.T, level int, dict, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w *Writer
	var err error
	if dict != nil {
		w, err = NewWriterDict(&buf, level, dict)
	} else {
		w, err = NewWriter(&buf, level)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func goldenCases() []goldenCase {
	var cases []goldenCase
	for _, n := range []int{0, 1, 3, 4, 258, 259, 32767, 32768, 32769, 65536, 300000} {
		cases = append(cases, goldenCase{name: fmt.Sprintf("level6/seed1/%d", n), run: func(t *testing.T) []byte {
			return compressOnce(t, 6, nil, genCorpus(1, n))
		}})
	}
	cases = append(cases, goldenCase{name: "level6/seed2/3MiB", large: true, run: func(t *testing.T) []byte {
		return compressOnce(t, 6, nil, genCorpus(2, 3<<20))
	}})
	// The way blocks/layer deflates a member in pieces: each piece with the
	// 32 KiB before it as dictionary, ending in a sync flush but the last.
	cases = append(cases, goldenCase{name: "level6/seed3/pieces", run: func(t *testing.T) []byte {
		data := genCorpus(3, 250000)
		var out []byte
		for off := 0; off < len(data); off += 100000 {
			var dict []byte
			if off > 0 {
				dict = data[max(0, off-32768):off]
			}
			var buf bytes.Buffer
			w, err := NewWriterDict(&buf, 6, dict)
			if err != nil {
				t.Fatal(err)
			}
			end := min(off+100000, len(data))
			if _, err := w.Write(data[off:end]); err != nil {
				t.Fatal(err)
			}
			if end == len(data) {
				err = w.Close()
			} else {
				err = w.Flush()
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, buf.Bytes()...)
		}
		return out
	}})
	// Odd-sized writes, flushes, then Reset and a second stream.
	cases = append(cases, goldenCase{name: "level6/seed4/flush-reset", run: func(t *testing.T) []byte {
		data := genCorpus(4, 200000)
		var buf bytes.Buffer
		w, err := NewWriter(&buf, 6)
		if err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 2; round++ {
			r := splitMix64(uint64(40 + round))
			for off := 0; off < len(data); {
				end := min(len(data), off+1+r.intn(20000))
				if _, err := w.Write(data[off:end]); err != nil {
					t.Fatal(err)
				}
				if r.intn(3) == 0 {
					if err := w.Flush(); err != nil {
						t.Fatal(err)
					}
				}
				off = end
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if round == 0 {
				w.Reset(&buf)
			}
		}
		return buf.Bytes()
	}})
	for _, level := range []int{HuffmanOnly, NoCompression, BestSpeed, 2, 4, BestCompression} {
		cases = append(cases, goldenCase{name: fmt.Sprintf("level%d/seed5/200000", level), run: func(t *testing.T) []byte {
			return compressOnce(t, level, nil, genCorpus(5, 200000))
		}})
	}
	return cases
}

// goldenDigests are the sha256 digests of goldenCases' outputs, computed
// with the unmodified copy of Go 1.26.8's compressor (commit ce2f451 of
// blockfile, before any speedup of this package) and pasted here. They pin
// the output even when the standard library, the other reference of the
// tests, changes in a later Go release. Never regenerate them from changed
// code: a mismatch means the output changed, which breaks every member
// digest that blockfile has written.
var goldenDigests = map[string]string{
	"level6/seed1/0":           "f067985d352d2da6dfaef4844a66d06c5371ecbd9530a4d195ac599fef8b3427",
	"level6/seed1/1":           "d2abf9c54aaa956926b1ef7f6fa5c1b66172413c0f0553a029800d5d0d0a8e19",
	"level6/seed1/3":           "3428dc97a6956e31b5160ac72f556b890fbd2802b857dec65e2dc8cd0f3b3d7a",
	"level6/seed1/4":           "1698ee89455d3ac568da3004e35c420e79f97186248e2d17da64725d80e8bcbe",
	"level6/seed1/258":         "dc5f2f1e74d276034c2b001e9b1c7cf0dd9e7818abb305ee1af1e00801bc8f83",
	"level6/seed1/259":         "e7019e331ce43aed3b9255130366cc55ae794adbb8c8cc0ef75aabe15298554d",
	"level6/seed1/32767":       "9af6a9013b2b23e3ec121cde7771a529882be6e800da77b41643ecd4cab541d8",
	"level6/seed1/32768":       "9ba14dbb4df1f60498bcb50300b5fa7f53382b4b9c3fd9f1a4a1ac515c3c24ce",
	"level6/seed1/32769":       "605a1cec77487c0c2ff7e7d6f76c922fdb7b35c34d25a1f3001f6c38c604c66d",
	"level6/seed1/65536":       "1e1df02d2174b81924f3586bda5072377f57e725569691c2ef6f15c009db3ba2",
	"level6/seed1/300000":      "4d4090cf65242a2e0ce754a4849d340d1f8e5dd4c1ed6eae8462ad5beba9aae1",
	"level6/seed2/3MiB":        "b59db5da69eb1dda752be050c8a319714c4b2993e6b4c45e7fd734279231062e",
	"level6/seed3/pieces":      "015fb7e935b467c97c379d7d29f15679e96e7d20ea5d16b673ad63ff4188810f",
	"level6/seed4/flush-reset": "18fb65e63d52da52b8fabea7f014b264ad37d44014e9f823463f322979f90a8c",
	"level-2/seed5/200000":     "c7ad962e1b5751e7d7d67b5e137f2fec7307491fc71637e4a19aeddba58ab95e",
	"level0/seed5/200000":      "93a1ca206544e5a2eb6e5faf5a91f40d510bbd49c06ff78185c37c19cba61580",
	"level1/seed5/200000":      "e9e3af4798ed1605aeed3791e782cde2511bbd3c245b35f9acbb93711f7de23d",
	"level2/seed5/200000":      "34599ca5f0b9f1e20e8956226056d5af033af0acfb3995ec5e05203a9f1d18bc",
	"level4/seed5/200000":      "6394b70a9d871a69b61cae3271f7d63f762d5f6c18e484f065e68b4972945e00",
	"level9/seed5/200000":      "8f864191a80e682966a5a8469e92ac0f20c9c027b0453502c0977bc1392c56ed",
}

func TestGoldenDigests(t *testing.T) {
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			if c.large && testing.Short() {
				t.Skip("large case; runs without -short")
			}
			sum := sha256.Sum256(c.run(t))
			got := hex.EncodeToString(sum[:])
			want, ok := goldenDigests[c.name]
			if !ok {
				t.Fatalf("no golden digest for %q (output sha256 %s)", c.name, got)
			}
			if got != want {
				t.Fatalf("output sha256 %s, want %s: the compressor's output changed", got, want)
			}
		})
	}
}
