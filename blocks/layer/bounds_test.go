package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockfile/blockfile/blocks"
)

// gnuSparseHeader is the 512-byte header of an old-GNU sparse entry ('S')
// whose one data region covers its first size bytes: size bytes of
// physical data follow it.
func gnuSparseHeader(name string, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:], name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = 'S'
	copy(h[257:], "ustar  \x00")
	// Sparse map: region 0 at offset 0, size bytes long; realsize = size.
	copy(h[386:], fmt.Sprintf("%011o\x00", 0))
	copy(h[398:], fmt.Sprintf("%011o\x00", size))
	copy(h[483:], fmt.Sprintf("%011o\x00", size))
	copy(h[148:], "        ")
	var sum int64
	for _, b := range h {
		sum += int64(b)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

// sparseTar streams a tar holding one sparse entry with n bytes of
// physical data (zeros, so a gzip of it is ~1000 times smaller: what a
// hostile 2 MB layer can expand to), then a small regular file.
func sparseTar(t testing.TB, n int64) io.Reader {
	pad := make([]byte, (512-n%512)%512)
	tail := makeTar(t, reg("after", []byte("a regular file after the sparse one")))
	return io.MultiReader(bytes.NewReader(gnuSparseHeader("sparse", n)), io.LimitReader(zeroReader{}, n), bytes.NewReader(pad), bytes.NewReader(tail))
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// peakHeap runs f and returns the highest live heap seen while it ran.
func peakHeap(t *testing.T, f func()) uint64 {
	t.Helper()
	old := debug.SetGCPercent(20)
	defer debug.SetGCPercent(old)
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	wg.Wait()
	return peak.Load()
}

// A sparse entry's physical bytes are streamed, not held: Split of a layer
// with 128 MiB of them (about 130 KiB of gzip) stays within its stated memory (docs/FORMAT.md
// section 9), far below the entry's size.
func TestSplitSparseEntryMemoryBounded(t *testing.T) {
	if raceEnabled {
		t.Skip("heap figures mean nothing under the race detector; this runs in the plain test run")
	}
	const physical = 128 << 20
	const bound = 96 << 20 // Split's ~30 MiB, plus collector slack
	var res *SplitResult
	var err error
	peak := peakHeap(t, func() {
		res, err = Split(context.Background(), sparseTar(t, physical), io.Discard, io.Discard, SplitOptions{Members: newMemStore(), MinBlockSize: 1, TempDir: t.TempDir()})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blocks) != 0 {
		t.Errorf("%d blocks: the file after a sparse entry stays verbatim, the sparse one is never a block", len(res.Blocks))
	}
	t.Logf("peak heap %d MiB for %d MiB of sparse data", peak>>20, physical>>20)
	if peak > bound {
		t.Fatalf("peak heap %d MiB splitting a layer with %d MiB of sparse data; bound %d MiB", peak>>20, physical>>20, bound>>20)
	}
}

// A stub document is bounded (docs/FORMAT.md section 9): a larger one is
// refused before it is parsed.
func TestParseStubRefusesOversized(t *testing.T) {
	big := append([]byte(blocks.StubMagic), bytes.Repeat([]byte("x"), MaxStubSize)...)
	if _, err := ParseStub(big); !errors.Is(err, ErrBadStub) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("ParseStub(%d bytes) = %v, want ErrBadStub naming the bound", len(big), err)
	}
}
