package layer

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestRealLayerFigures splits real layer tars named by BLOCKFILE_REAL_TARS
// (a space-separated list of uncompressed tar files, e.g. tars of
// /tmp/bench/scenario/layers/<layer>) with a cold store and logs the sizes of
// the standard and blocked layers and the split speed. It is a measurement,
// not a unit test: without the variable it is skipped, and so under -short.
func TestRealLayerFigures(t *testing.T) {
	list := os.Getenv("BLOCKFILE_REAL_TARS")
	if testing.Short() || list == "" {
		t.Skip("set BLOCKFILE_REAL_TARS to tar files to measure")
	}
	minBlock := int64(16 << 10) // blocks/image.DefaultMinBlockSize
	if v := os.Getenv("BLOCKFILE_REAL_MIN"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		minBlock = n
	}
	for _, p := range filepath.SplitList(list) {
		for _, c := range compressions {
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := f.Stat()
			ms := newDirStore(t)
			start := time.Now()
			std, blk := newHashWriter(), newHashWriter()
			res, err := Split(context.Background(), f, std, blk, SplitOptions{Compression: c, MinBlockSize: minBlock, Members: ms, TempDir: t.TempDir()})
			d := time.Since(start)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			var members int64
			for _, b := range res.Blocks {
				members += b.Member.Size
			}
			t.Logf("%s %s: tar %.2f MB, split %.1f MB/s (%v); standard %d bytes; blocked %d bytes; %d blocks, members %d bytes",
				filepath.Base(p), c, float64(fi.Size())/1e6, float64(fi.Size())/1e6/d.Seconds(), d.Round(time.Millisecond),
				res.Standard.Size, res.Blocked.Size, len(res.Blocks), members)
		}
	}
}
