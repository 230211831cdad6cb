package image

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/schollz/progressbar/v3"

	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/internal/units"
)

// progress reports layer bytes processed. A nil *progress is quiet. It is
// safe for concurrent use (hydrate writes several layers at once).
type progress struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	plain io.Writer
	what  string
	total int64
	done  int64
	last  time.Time
}

// startProgress sizes the bar by summing the layer sizes of every image
// manifest under root (manifests are small; layers are not read here).
func (e *exporter) startProgress(ctx context.Context, root ocispec.Descriptor, opts ExportOptions) error {
	if opts.Progress == nil {
		return nil
	}
	total, err := layerBytes(ctx, e.src, root)
	if err != nil {
		return err
	}
	e.prog = newProgress(opts.Progress, opts.PlainProgress, total, "export")
	return nil
}

func newProgress(w io.Writer, plain bool, total int64, what string) *progress {
	p := &progress{total: total, what: what}
	if plain {
		p.plain = w
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

func layerBytes(ctx context.Context, src transport.Source, d ocispec.Descriptor) (int64, error) {
	switch {
	case transport.IsIndex(d.MediaType):
		var idx ocispec.Index
		if err := readJSON(ctx, src, d, &idx); err != nil {
			return 0, err
		}
		var n int64
		for _, c := range idx.Manifests {
			if !transport.IsManifest(c.MediaType) || c.Annotations["vnd.docker.reference.type"] != "" {
				continue
			}
			m, err := layerBytes(ctx, src, c)
			if err != nil {
				return 0, err
			}
			n += m
		}
		return n, nil
	case transport.IsManifest(d.MediaType):
		var m ocispec.Manifest
		if err := readJSON(ctx, src, d, &m); err != nil {
			return 0, err
		}
		var n int64
		for _, l := range m.Layers {
			n += l.Size
		}
		return n, nil
	}
	return 0, nil
}

func (p *progress) add(n int64) {
	if p == nil || n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	if time.Since(p.last) > 2*time.Second || p.done == p.total {
		p.last = time.Now()
		fmt.Fprintf(p.plain, "%s: %s of %s\n", p.what, units.Size(p.done), units.Size(p.total))
	}
}

func (p *progress) finish() {
	if p == nil {
		return
	}
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// reader counts what is read from r.
func (p *progress) reader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return progressReader{r: r, p: p}
}

// writer counts what is written to w.
func (p *progress) writer(w io.Writer) io.Writer {
	if p == nil {
		return w
	}
	return progressWriter{w: w, p: p}
}

type progressWriter struct {
	w io.Writer
	p *progress
}

func (w progressWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.p.add(int64(n))
	return n, err
}

type progressReader struct {
	r io.Reader
	p *progress
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.add(int64(n))
	return n, err
}
