package layer

import (
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/blockfile/blockfile/blocks"
)

// benchTar is a synthetic ~64 MB layer: jar-like incompressible files of
// 100 KB to 4 MB (about 48 MB) and 4000 small text files (about 16 MB).
var benchTar = sync.OnceValue(func() []byte {
	var es []entry
	for i := range 4000 {
		line := fmt.Sprintf("line %d of a small text file: key=value, lorem ipsum dolor sit amet %d\n", i, i*7)
		es = append(es, reg(fmt.Sprintf("app/conf/%03d/file-%d.txt", i%100, i), []byte(strings.Repeat(line, 4096/len(line)))))
		if i%160 == 0 {
			size := 100_000 + (i*977_123)%3_900_000
			es = append(es, reg(fmt.Sprintf("app/libs/dep-%d.jar", i), randBytes(uint64(i), size)))
		}
	}
	return makeTar(&testing.T{}, es...)
})

type benchLayer struct {
	res      *SplitResult
	std, blk string // files
	store    *dirStore
}

func prepareBench(b *testing.B, c blocks.Compression) *benchLayer {
	b.Helper()
	ms := newDirStore(b)
	res, std, blk, err := splitBytes(b, benchTar(), SplitOptions{Compression: c, MinBlockSize: 64 << 10, Members: ms})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	l := &benchLayer{res: res, std: filepath.Join(dir, "std"), blk: filepath.Join(dir, "blk"), store: ms}
	if err := os.WriteFile(l.std, std, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(l.blk, blk, 0o644); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkSplit: cold store (every member compressed and pushed).
func BenchmarkSplit(b *testing.B) {
	for _, c := range compressions {
		b.Run(string(c), func(b *testing.B) {
			tarb := benchTar()
			b.SetBytes(int64(len(tarb)))
			for b.Loop() {
				ms := newDirStore(b)
				if _, err := Split(context.Background(), bytes.NewReader(tarb), io.Discard, io.Discard,
					SplitOptions{Compression: c, MinBlockSize: 64 << 10, Members: ms, TempDir: b.TempDir()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSplitWarm: every member already stored (copied, checked, not compressed).
func BenchmarkSplitWarm(b *testing.B) {
	for _, c := range compressions {
		b.Run(string(c), func(b *testing.B) {
			l := prepareBench(b, c)
			tarb := benchTar()
			b.SetBytes(int64(len(tarb)))
			for b.Loop() {
				if _, err := Split(context.Background(), bytes.NewReader(tarb), io.Discard, io.Discard,
					SplitOptions{Compression: c, MinBlockSize: 64 << 10, Members: l.store, TempDir: b.TempDir()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHydrate: blocked layer file + member files -> standard layer file.
// Bytes are those of the standard layer written.
func BenchmarkHydrate(b *testing.B) {
	for _, c := range compressions {
		b.Run(string(c), func(b *testing.B) {
			l := prepareBench(b, c)
			members := memberDescs(l.res)
			out := filepath.Join(b.TempDir(), "out")
			b.SetBytes(l.res.Standard.Size)
			for b.Loop() {
				in, err := os.Open(l.blk)
				if err != nil {
					b.Fatal(err)
				}
				f, err := os.Create(out)
				if err != nil {
					b.Fatal(err)
				}
				if err := Hydrate(context.Background(), in, f, members, l.store, l.res.Standard); err != nil {
					b.Fatal(err)
				}
				in.Close()
				f.Close()
			}
		})
	}
}

// BenchmarkCopyBaseline: a plain file-to-file copy of the standard layer.
func BenchmarkCopyBaseline(b *testing.B) {
	l := prepareBench(b, blocks.Gzip)
	out := filepath.Join(b.TempDir(), "out")
	b.SetBytes(l.res.Standard.Size)
	buf := make([]byte, copyBufSize)
	for b.Loop() {
		in, err := os.Open(l.std)
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		// Plain reads and writes (no copy_file_range), as a reader of one
		// blob and writer of another would do.
		if _, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{in}, buf); err != nil {
			b.Fatal(err)
		}
		in.Close()
		f.Close()
	}
}

// BenchmarkGzipRepack: what re-compressing the layer costs (compress/gzip -6).
func BenchmarkGzipRepack(b *testing.B) {
	tarb := benchTar()
	b.SetBytes(int64(len(tarb)))
	for b.Loop() {
		zw, _ := stdgzip.NewWriterLevel(io.Discard, 6)
		if _, err := zw.Write(tarb); err != nil {
			b.Fatal(err)
		}
		zw.Close()
	}
}

// BenchmarkVerifiedCopyBaseline: the same copy, hashing what is read (what
// any digest-checked copy such as skopeo's or oras's does). Hydrate hashes
// twice: the store verifies each member it reads, and the output is checked
// against the standard layer's digest.
func BenchmarkVerifiedCopyBaseline(b *testing.B) {
	l := prepareBench(b, blocks.Gzip)
	out := filepath.Join(b.TempDir(), "out")
	b.SetBytes(l.res.Standard.Size)
	buf := make([]byte, copyBufSize)
	for b.Loop() {
		in, err := os.Open(l.std)
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		h := newHashWriter()
		if _, err := io.CopyBuffer(io.MultiWriter(f, h), struct{ io.Reader }{in}, buf); err != nil {
			b.Fatal(err)
		}
		if h.digest() != l.res.Standard.Digest {
			b.Fatal("digest")
		}
		in.Close()
		f.Close()
	}
}

// BenchmarkRealLayers splits real layer tars named by BLOCKFILE_REAL_TARS
// (a list of uncompressed tar files separated like PATH, e.g. tars of
// /tmp/bench/scenario/layers/<layer>) with a cold store, per compression,
// and reports the split speed (MB/s), the standard and blocked layer sizes
// and the member bytes. BLOCKFILE_REAL_MIN sets the minimum block size
// (default 16 KiB, blocks/image.DefaultMinBlockSize). Run:
//
//	BLOCKFILE_REAL_TARS=/tmp/a.tar:/tmp/b.tar go test -run '^$' -bench RealLayers -benchtime 1x ./blocks/layer
func BenchmarkRealLayers(b *testing.B) {
	list := os.Getenv("BLOCKFILE_REAL_TARS")
	if list == "" {
		b.Skip("set BLOCKFILE_REAL_TARS to tar files to measure")
	}
	minBlock := int64(16 << 10)
	if v := os.Getenv("BLOCKFILE_REAL_MIN"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		minBlock = n
	}
	for _, p := range filepath.SplitList(list) {
		for _, c := range compressions {
			b.Run(filepath.Base(p)+"/"+string(c), func(b *testing.B) {
				fi, err := os.Stat(p)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(fi.Size())
				var res *SplitResult
				for b.Loop() {
					b.StopTimer()
					f, err := os.Open(p)
					if err != nil {
						b.Fatal(err)
					}
					ms := newDirStore(b)
					b.StartTimer()
					res, err = Split(context.Background(), f, newHashWriter(), newHashWriter(), SplitOptions{Compression: c, MinBlockSize: minBlock, Members: ms, TempDir: b.TempDir()})
					f.Close()
					if err != nil {
						b.Fatal(err)
					}
				}
				var members int64
				for _, bl := range res.Blocks {
					members += bl.Member.Size
				}
				b.ReportMetric(float64(res.Standard.Size), "standard-bytes")
				b.ReportMetric(float64(res.Blocked.Size), "blocked-bytes")
				b.ReportMetric(float64(len(res.Blocks)), "blocks")
				b.ReportMetric(float64(members), "member-bytes")
			})
		}
	}
}
