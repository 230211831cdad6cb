package store_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// A block goes in as a stream, is addressed by the sha256 of its bytes, and
// comes out verified.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "store-example-")
	defer os.RemoveAll(dir)

	s, err := store.Create(filepath.Join(dir, "store"))
	if err != nil {
		panic(err)
	}
	desc, err := s.Ingest(ctx, blocks.MediaTypeBlock, strings.NewReader("hello\n"))
	if err != nil {
		panic(err)
	}
	fmt.Println(desc.Digest) // what `sha256sum` prints for the same bytes

	rc, err := s.Fetch(ctx, desc)
	if err != nil {
		panic(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc) // an error here if the blob was tampered with
	fmt.Printf("%q %v\n", b, err)

	if err := s.Tag(ctx, "greeting", desc); err != nil {
		panic(err)
	}
	got, _ := s.Resolve(ctx, "greeting")
	fmt.Println(got.Digest == desc.Digest)
	// Output:
	// sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03
	// "hello\n" <nil>
	// true
}
