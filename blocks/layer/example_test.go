package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// Split a layer into its standard and blocked forms, then hydrate the blocked
// form back into the exact standard layer.
func Example() {
	ctx := context.Background()
	var tarb bytes.Buffer
	tw := tar.NewWriter(&tarb)
	for name, data := range map[string][]byte{"app/libs/a.jar": randBytes(1, 100_000)} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))})
		tw.Write(data)
	}
	tw.Close()
	store := newMemStore() // in real use: *store.Store

	var std, blocked bytes.Buffer
	res, err := Split(ctx, &tarb, &std, &blocked, SplitOptions{
		Compression: blocks.Gzip, MinBlockSize: 64 << 10, Members: store, TempDir: os.TempDir(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, b := range res.Blocks {
		fmt.Println("block:", b.Path, b.Raw.Size)
	}
	stubs, _ := ReadStubs(ctx, bytes.NewReader(blocked.Bytes()))
	for _, s := range stubs {
		fmt.Println("stub:", s.StubPath)
	}

	var out bytes.Buffer
	err = Hydrate(ctx, &blocked, &out, []ocispec.Descriptor{res.Blocks[0].Member}, store, res.Standard)
	fmt.Println("hydrated:", err == nil && bytes.Equal(out.Bytes(), std.Bytes()))
	// Output:
	// block: app/libs/a.jar 100000
	// stub: app/libs/.import.a.jar
	// hydrated: true
}
