package layer

import (
	"context"
	"io"

	"github.com/blockfile/blockfile/blocks/internal/deflate"
)

// WriteBlockMember writes to w the gzip member of the n bytes read from r,
// byte for byte as Split writes a block's data member (FormPieces: 1 MiB
// pieces deflated by the frozen level-6 compressor, on two goroutines). It
// streams: a few MiB are held whatever n is. Bundles use it to rebuild a
// block member from a delta of its uncompressed bytes; the caller checks
// the result against the member's digest.
func WriteBlockMember(ctx context.Context, w io.Writer, r io.Reader, n int64) error {
	tasks := make(chan *chunkTask, memberWorkers)
	defer close(tasks)
	for range memberWorkers {
		go func() {
			plain, _ := deflate.NewWriter(io.Discard, gzipLevel) // the level is valid
			for t := range tasks {
				t.run(plain)
			}
		}()
	}
	return chunkedGzip(ctx, w, r, n, tasks)
}
