package transport

import (
	"context"
	"path/filepath"
	"testing"
)

// Only sinks whose pushes are independent files say they take concurrent
// pushes: an oci-archive: is one tar stream.
func TestPushesConcurrently(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for ref, want := range map[string]bool{
		"oci:" + filepath.Join(dir, "layout"):          true,
		"oci-archive:" + filepath.Join(dir, "img.tar"): false,
	} {
		dst, err := ParseSink(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := PushesConcurrently(dst); got != want {
			t.Errorf("%s: PushesConcurrently %v, want %v", ref, got, want)
		}
		dst.Abort()
	}
}
