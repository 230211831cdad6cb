package registry

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/blockfile/blockfile/internal/units"
)

// progress reports bytes moved: a bar on a terminal, or (plain) a line at
// most every 2 seconds and at the end. A nil *progress is quiet; it is safe
// for concurrent use.
type progress struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	plain io.Writer
	what  string
	total int64
	done  int64
	last  time.Time
}

func newProgress(w io.Writer, plain bool, total int64, what string) *progress {
	if w == nil {
		return nil
	}
	p := &progress{total: total, what: what}
	if plain {
		p.plain = w
		fmt.Fprintf(w, "%s: %s to transfer\n", what, mib(total))
		return p
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
	return p
}

func (p *progress) add(n int64) {
	if p == nil || n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// A pull reads a little more than the blobs it lacks (the header
	// members and gaps of its Range GETs): the total is not passed.
	n = min(n, p.total-p.done)
	if n <= 0 {
		return
	}
	p.done += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	if time.Since(p.last) > 2*time.Second {
		p.last = time.Now()
		fmt.Fprintf(p.plain, "%s: %s/%s\n", p.what, mib(p.done), mib(p.total))
	}
}

// note prints a line of its own (plain mode only: a bar would be broken).
func (p *progress) note(format string, args ...any) {
	if p == nil || p.plain == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.plain, p.what+": "+format+"\n", args...)
}

func (p *progress) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
		return
	}
	fmt.Fprintf(p.plain, "%s: %s/%s done\n", p.what, mib(p.done), mib(p.total))
}

// mib prints a size the way every verb does (internal/units).
func mib(n int64) string { return units.Size(n) }
