package deflate

import (
	"compress/flate"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"
)

// benchData returns about 32 MB of shared libraries and executables, the
// kind of content a JRE's blocks hold: at most 2 MiB of each regular file of
// at least 64 KiB in /usr/lib/x86_64-linux-gnu and /usr/bin, in name order,
// taking from the two directories in turn.
func benchData(b *testing.B) []byte {
	const total = 32 << 20
	var lists [][]string
	for _, dir := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/bin"} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		var names []string
		for _, e := range ents {
			if info, err := e.Info(); err == nil && e.Type().IsRegular() && info.Size() >= 64<<10 {
				names = append(names, filepath.Join(dir, e.Name()))
			}
		}
		sort.Strings(names)
		lists = append(lists, names)
	}
	data := make([]byte, 0, total+2<<20)
	for i := 0; len(data) < total; i++ {
		took := false
		for _, names := range lists {
			if i < len(names) && len(data) < total {
				data = append(data, readPrefix(names[i], 2<<20)...)
				took = true
			}
		}
		if !took {
			break
		}
	}
	if len(data) < total/2 {
		b.Skipf("only %d bytes of libraries and executables on this machine", len(data))
	}
	return data[:min(len(data), total)]
}

// BenchmarkDeflateVsStdlib deflates the same ~32 MB at level 6 with this
// package and with compress/flate, in the same process, and reports both
// speeds and their ratio (speedup > 1: this package is faster). Input is
// written in 1 MiB pieces as blockfile does; the two streams advance piece
// by piece, alternating which goes first, so that a change of machine load
// weighs on both alike. MB/s and stdlib-MB/s are wall-clock speeds and
// speedup their ratio; cpu-speedup is the ratio of the CPU time the thread
// spent in each (Linux), which a busy machine disturbs much less. Both
// outputs' CRC-32s are compared, so a divergence fails the benchmark too.
func BenchmarkDeflateVsStdlib(b *testing.B) {
	requireReference(b)
	data := benchData(b)
	ours, err := NewWriter(nil, 6)
	if err != nil {
		b.Fatal(err)
	}
	std, err := flate.NewWriter(nil, 6)
	if err != nil {
		b.Fatal(err)
	}
	// Deflating runs on the calling goroutine only, so its thread's CPU
	// time is the compressor's.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, haveCPU := threadCPU()
	var wall, cpu [2]time.Duration // ours, std
	timed := func(k int, f func() error) {
		c0, _ := threadCPU()
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		wall[k] += time.Since(start)
		c1, _ := threadCPU()
		cpu[k] += c1 - c0
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		oursSum, stdSum := crc32.NewIEEE(), crc32.NewIEEE()
		ours.Reset(oursSum)
		std.Reset(stdSum)
		// Step j writes the j-th MiB; the last step closes.
		pieces := (len(data) + 1<<20 - 1) >> 20
		for j := 0; j <= pieces; j++ {
			step := func(w flateWriter) func() error {
				if j == pieces {
					return w.Close
				}
				return func() error {
					_, err := w.Write(data[j<<20 : min((j+1)<<20, len(data))])
					return err
				}
			}
			if j%2 == 0 {
				timed(0, step(ours))
				timed(1, step(std))
			} else {
				timed(1, step(std))
				timed(0, step(ours))
			}
		}
		if oursSum.Sum32() != stdSum.Sum32() {
			b.Fatalf("output CRC-32 %08x, compress/flate's %08x", oursSum.Sum32(), stdSum.Sum32())
		}
	}
	mb := float64(len(data)) * float64(b.N) / 1e6
	b.ReportMetric(mb/wall[0].Seconds(), "MB/s")
	b.ReportMetric(mb/wall[1].Seconds(), "stdlib-MB/s")
	b.ReportMetric(wall[1].Seconds()/wall[0].Seconds(), "speedup")
	if haveCPU {
		b.ReportMetric(cpu[1].Seconds()/cpu[0].Seconds(), "cpu-speedup")
	}
}
