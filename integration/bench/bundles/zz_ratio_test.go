package main

import (
	stdgzip "compress/gzip"
	"io"
	"os"
	"testing"

	kgzip "github.com/klauspost/compress/gzip"
)

type zcounter struct{ n int64 }

func (c *zcounter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestRatio(t *testing.T) {
	for _, f := range []string{"/tmp/bf5/ztest/sdk.tar", "/tmp/bf5/ztest/system.tar"} {
		for _, lv := range []int{-1, 6, 7, 9} {
			in, _ := os.Open(f)
			c := &zcounter{}
			w, _ := kgzip.NewWriterLevel(c, lv)
			io.Copy(w, in)
			w.Close()
			in.Close()
			t.Logf("%s klauspost level %d: %d", f, lv, c.n)
		}
		in, _ := os.Open(f)
		c := &zcounter{}
		w, _ := stdgzip.NewWriterLevel(c, 6)
		io.Copy(w, in)
		w.Close()
		in.Close()
		t.Logf("%s stdlib level 6: %d", f, c.n)
	}
}
