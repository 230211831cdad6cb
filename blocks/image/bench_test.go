package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// benchLayout writes a synthetic ~100 MB image (uncompressed) into an OCI
// layout: four layers of jar-like files, each half PRNG bytes and half
// repetitive text, plus small files. It returns the layout reference and the
// uncompressed bytes of all layers (what b.SetBytes counts).
func benchLayout(b *testing.B) (string, int64) {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "src")
	lb := newBuilder(b, "oci:"+dir)
	text := bytes.Repeat([]byte("com/example/service/Handler$Inner.class\x00\x01\x02"), 8000)
	var total int64
	var layers [][]tfile
	for l := range 4 {
		var files []tfile
		for i := range 56 {
			size := 256<<10 + (i%7)*64<<10
			data := make([]byte, size)
			fillRand(data[:size/2], int64(l*100+i))
			copy(data[size/2:], text)
			files = append(files,
				tfile{name: fmt.Sprintf("app/libs/l%d-dep%02d.jar", l, i), typ: tar.TypeReg, data: data},
				tfile{name: fmt.Sprintf("app/conf/l%d-%02d.properties", l, i), typ: tar.TypeReg, data: []byte("key=value\n")})
			total += int64(size) + 10
		}
		layers = append(layers, files)
	}
	lb.commit(lb.image("amd64", nil, layers...))
	return "oci:" + dir, total
}

func fillRand(p []byte, seed int64) {
	x := uint64(seed)*0x9E3779B97F4A7C15 + 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
}

func benchStore(b *testing.B) *store.Store {
	b.Helper()
	s, err := store.Create(filepath.Join(b.TempDir(), fmt.Sprint("store-", b.N)))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchExport(b *testing.B, s *store.Store, ref, name string) *ExportResult {
	b.Helper()
	src, err := transport.ParseSource(context.Background(), ref)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	res, err := Export(context.Background(), s, src, name, ExportOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return res
}

// BenchmarkExportCold: export into an empty store (every member compressed).
func BenchmarkExportCold(b *testing.B) {
	ref, total := benchLayout(b)
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir, _ := os.MkdirTemp(b.TempDir(), "cold")
		s, err := store.Create(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		benchExport(b, s, ref, "bench")
	}
}

// BenchmarkExportWarm: export into a store that already holds every member
// (an upgrade whose files did not change is hashed, not compressed).
func BenchmarkExportWarm(b *testing.B) {
	ref, total := benchLayout(b)
	s := benchStore(b)
	benchExport(b, s, ref, "bench")
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if res := benchExport(b, s, ref, "bench"); res.NewMembers != 0 {
			b.Fatalf("warm export wrote %d new members", res.NewMembers)
		}
	}
}

// BenchmarkHydrate: reassemble the standard image from the blocked form into
// an OCI layout (bytes counted uncompressed, like the exports).
func BenchmarkHydrate(b *testing.B) {
	ref, total := benchLayout(b)
	s := benchStore(b)
	benchExport(b, s, ref, "bench")
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		out := filepath.Join(b.TempDir(), fmt.Sprint("out", i))
		dst, err := transport.ParseSink(context.Background(), "oci:"+out)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := Hydrate(context.Background(), s, "bench", dst, HydrateOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(out)
		b.StartTimer()
	}
}
