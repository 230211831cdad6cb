package serve

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
)

// layoutFixture is an image exported into a store whose standard layer
// with blocks was read before it was dropped (the bytes a client must get)
// and laid out by the test, so that ranges can be placed on part
// boundaries.
type layoutFixture struct {
	s     *store.Store
	img   testImage
	l     image.Layer
	want  []byte // the standard layer
	parts []layer.Part
}

func newLayoutFixture(t *testing.T, seed int64) layoutFixture {
	t.Helper()
	ctx := context.Background()
	s := openStore(t)
	img := exportImage(t, s, "team/app:v2", seed)
	resolved, err := imageResolve(ctx, s, img.name)
	if err != nil {
		t.Fatal(err)
	}
	f := layoutFixture{s: s, img: img}
	for _, l := range resolved.Manifests[0].Layers {
		if l.HasBlocks() {
			f.l = l
		}
	}
	if f.want, err = os.ReadFile(s.BlobPath(f.l.Standard.Digest)); err != nil {
		t.Fatal(err)
	}
	if digest.FromBytes(f.want) != f.l.Standard.Digest {
		t.Fatal("stored standard layer does not match its digest")
	}
	rc, err := s.Fetch(ctx, f.l.Blocked)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, f.parts, err = layer.Layout(ctx, rc, f.l.Standard.MediaType); err != nil {
		t.Fatal(err)
	}
	kinds := map[layer.PartKind]int{}
	for _, p := range f.parts {
		kinds[p.Kind]++
	}
	if kinds[layer.PartHeader] < 2 || kinds[layer.PartVerbatim] < 2 {
		t.Fatalf("test layer lays out as %v: want several header and verbatim parts", kinds)
	}
	dropStandard(t, s, img)
	return f
}

func (f layoutFixture) blobPath() string { return "/v2/team/app/blobs/" + f.l.Standard.Digest.String() }

// TestRangesAcrossParts: Range requests of a laid-out layer that start and
// end inside header members (rebuilt from the stubs), and that cross every
// kind of part boundary, give exactly the bytes of the standard layer, all
// from one layout; the first of them is served while the layout is being
// verified.
func TestRangesAcrossParts(t *testing.T) {
	f := newLayoutFixture(t, 21)
	sv, addr, logs := startServer(t, f.s, Options{})
	size := int64(len(f.want))
	type span struct{ start, end int64 } // [start, end)
	var spans []span
	for i, p := range f.parts {
		end := p.Offset + p.Size
		switch p.Kind {
		case layer.PartHeader:
			spans = append(spans,
				span{p.Offset + 1, end - 1},            // inside the header member
				span{p.Offset + 10, p.Offset + 11},     // one byte of it
				span{end - 5, end + 7},                 // header -> member
				span{max(p.Offset-3, 0), p.Offset + 4}, // whatever precedes -> header
			)
		default:
			if i+1 < len(f.parts) {
				spans = append(spans, span{end - 9, end + 2}) // member or verbatim -> next part
			}
		}
		if i+2 < len(f.parts) {
			// From inside one part to inside the one after next.
			q := f.parts[i+2]
			spans = append(spans, span{p.Offset + p.Size/2, q.Offset + q.Size/2 + 1})
		}
	}
	spans = append(spans, span{size - 1, size}, span{0, 1})
	// The first request: a header in the middle of the layer, before any
	// other request started the layout.
	first := f.parts[len(f.parts)/2]
	for _, p := range f.parts[1:] {
		if p.Kind == layer.PartHeader {
			first = p
			break
		}
	}
	spans = append([]span{{first.Offset + 2, first.Offset + first.Size - 2}}, spans...)
	for _, sp := range spans {
		rng := fmt.Sprintf("bytes=%d-%d", sp.start, sp.end-1)
		r := get(t, addr, f.blobPath(), map[string]string{"Range": rng})
		if r.status != http.StatusPartialContent || r.header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", sp.start, sp.end-1, size) {
			t.Errorf("Range %s: status %d, Content-Range %q", rng, r.status, r.header.Get("Content-Range"))
			continue
		}
		if !bytes.Equal(r.body, f.want[sp.start:sp.end]) {
			t.Errorf("Range %s: %d bytes differ from the standard layer's [%d,%d)", rng, len(r.body), sp.start, sp.end)
		}
	}
	if full := get(t, addr, f.blobPath(), nil); full.status != http.StatusOK || !bytes.Equal(full.body, f.want) {
		t.Errorf("GET: status %d, %d bytes, want the %d bytes of the standard layer", full.status, len(full.body), size)
	}
	if n := sv.Hydrations(); n != 1 {
		t.Errorf("%d layouts for %d requests of one layer, want 1", n, len(spans)+1)
	}
	if c := logs.count("how=layout"); c != 1 {
		t.Errorf("log has %d 'how=layout' lines, want 1 (the layer laid out, not hydrated into a file)", c)
	}
}

// TestConcurrentPullsLayOutOnce: concurrent requests of a layer, whole and
// ranges, arriving while it is laid out, share one layout and get exact
// bytes.
func TestConcurrentPullsLayOutOnce(t *testing.T) {
	f := newLayoutFixture(t, 22)
	sv, addr, logs := startServer(t, f.s, Options{})
	size := int64(len(f.want))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+f.blobPath(), nil)
			start, end := int64(0), size
			if i%2 == 1 {
				p := f.parts[i%len(f.parts)]
				start, end = p.Offset+p.Size/3, min(size, p.Offset+p.Size+100)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end-1))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(body, f.want[start:end]) {
				errs <- fmt.Errorf("request %d: %d bytes, want [%d,%d) of the layer", i, len(body), start, end)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := sv.Hydrations(); n != 1 {
		t.Errorf("%d layouts of one layer for 16 concurrent requests, want 1", n)
	}
	if c := logs.count("how=layout"); c != 1 {
		t.Errorf("log has %d 'how=layout' lines, want 1", c)
	}
}

// fetchLayer GETs the layer and returns the status (0 if the request
// failed), the body and whether it was read to a clean end.
func fetchLayer(t *testing.T, addr, path string) (int, []byte, bool) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, nil, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err == nil
}

// TestTamperedMemberFailsLayout: a block member with one byte flipped in
// the store (same size) fails the pull: nothing complete is sent, the log
// names the member, and the next request lays out again. A member changed
// after its layer was verified (the job lingering) is not sent either.
func TestTamperedMemberFailsLayout(t *testing.T) {
	member := func(f layoutFixture) digest.Digest {
		for _, p := range f.parts {
			if p.Kind == layer.PartMember && p.Size > 2*wakeEvery {
				return p.Member // bytes of the layer are sent before it
			}
		}
		t.Fatal("no member of more than 512 KiB")
		return ""
	}
	check := func(t *testing.T, f layoutFixture, addr string, m digest.Digest, logs *logBuffer) {
		t.Helper()
		status, body, clean := fetchLayer(t, addr, f.blobPath())
		if status == http.StatusOK && clean {
			t.Errorf("a layer with a tampered member was served whole (%d bytes, hashes to %s)", len(body), digest.FromBytes(body))
		}
		if int64(len(body)) >= f.l.Standard.Size {
			t.Errorf("%d bytes sent of a layer of %d that does not match", len(body), f.l.Standard.Size)
		}
		waitFor(t, func() bool { return strings.Contains(logs.String(), "hydrate failed") })
		if l := logs.String(); !strings.Contains(l, "block member "+m.String()) || !strings.Contains(l, "digest mismatch") {
			t.Errorf("log does not name the tampered member %s:\n%s", m, l)
		}
	}
	t.Run("before", func(t *testing.T) {
		f := newLayoutFixture(t, 23)
		m := member(f)
		corrupt(t, f.s, m)
		sv, addr, logs := startServer(t, f.s, Options{})
		check(t, f, addr, m, logs)
		// The failed job is gone: the next request starts over.
		fetchLayer(t, addr, f.blobPath())
		if n := sv.Hydrations(); n != 2 {
			t.Errorf("%d layouts after two requests of a layer that fails, want 2", n)
		}
	})
	t.Run("after", func(t *testing.T) {
		f := newLayoutFixture(t, 24)
		m := member(f)
		sv, addr, logs := startServer(t, f.s, Options{})
		if status, body, clean := fetchLayer(t, addr, f.blobPath()); status != http.StatusOK || !clean || !bytes.Equal(body, f.want) {
			t.Fatalf("intact layer: status %d, %d bytes", status, len(body))
		}
		corrupt(t, f.s, m) // while the verified layout lingers
		status, body, clean := fetchLayer(t, addr, f.blobPath())
		if status == http.StatusOK && clean {
			t.Errorf("a lingering layout sent a member changed since it was hashed (%d bytes, hashes to %s)", len(body), digest.FromBytes(body))
		}
		if l := logs.String(); !strings.Contains(l, m.String()) || !strings.Contains(l, "changed since it was hashed") {
			t.Errorf("log does not name the changed member %s:\n%s", m, l)
		}
		// The job was dropped: the next request lays out again, and fails.
		check(t, f, addr, m, logs)
		if n := sv.Hydrations(); n != 2 {
			t.Errorf("%d layouts, want 2 (the lingering one dropped)", n)
		}
	})
}

// TestMissingMemberIsNamed: a member missing from the store fails the
// layout with an error naming it; the client gets an error status.
func TestMissingMemberIsNamed(t *testing.T) {
	f := newLayoutFixture(t, 25)
	var m digest.Digest
	for _, p := range f.parts {
		if p.Kind == layer.PartMember {
			m = p.Member
			break
		}
	}
	if err := os.Remove(f.s.BlobPath(m)); err != nil {
		t.Fatal(err)
	}
	_, addr, logs := startServer(t, f.s, Options{})
	if status, body, _ := fetchLayer(t, addr, f.blobPath()); status != http.StatusInternalServerError || bytes.Contains(body, f.want[:100]) {
		t.Errorf("layer with a missing first member: status %d, want 500", status)
	}
	if l := logs.String(); !strings.Contains(l, "block member "+m.String()) || !strings.Contains(l, "not found") {
		t.Errorf("log does not name the missing member %s:\n%s", m, l)
	}
}

// TestGCDuringReaders: a laid-out layer keeps the files it was hashed from
// open, so a gc that removes them from the store (its image untagged
// meanwhile) does not take them from a reader, which still sends the exact
// layer; readers hold no lease, so gc does not wait for them.
func TestGCDuringReaders(t *testing.T) {
	f := newLayoutFixture(t, 26)
	sv, addr, _ := startServer(t, f.s, Options{})
	if status, _, clean := fetchLayer(t, addr, f.blobPath()); status != http.StatusOK || !clean {
		t.Fatalf("GET: %d", status)
	}
	// A reader of the lingering job, as blob() holds it while it sends.
	j, release, err := sv.hyd.acquire(context.Background(), f.l)
	if err != nil || j == nil {
		t.Fatalf("acquire: %v %v", j, err)
	}
	defer release()
	if err := f.s.Untag(context.Background(), f.img.name); err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(f.s.Root()) // gc as another process would
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	removed, err := other.GC(ctx, false)
	if err != nil {
		t.Fatalf("gc while a reader holds a laid-out layer: %v", err)
	}
	gone := map[digest.Digest]bool{}
	for _, d := range removed {
		gone[d.Digest] = true
	}
	if !gone[f.l.Blocked.Digest] || !gone[f.l.Members[0].Digest] {
		t.Fatalf("gc did not remove the untagged image's blocked layer and members: %v", removed)
	}
	if _, err := os.Stat(f.s.BlobPath(f.l.Members[0].Digest)); !os.IsNotExist(err) {
		t.Fatalf("member still in the store after gc: %v", err)
	}
	var buf bytes.Buffer
	if err := j.copyRange(context.Background(), &buf, 0, int64(len(f.want))); err != nil || !bytes.Equal(buf.Bytes(), f.want) {
		t.Errorf("reader after gc removed the layer's files: %v, %d bytes, want the %d of the layer", err, buf.Len(), len(f.want))
	}
}

// TestColdServeReadsExtents: block members the store holds only as
// extents of another blob (as a registry pull leaves them, in the standard
// layer it wrote) are sent from there: the layer whole, and ranges of it.
func TestColdServeReadsExtents(t *testing.T) {
	f := newLayoutFixture(t, 23)
	ctx := context.Background()
	w, err := f.s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("bytes before the first extent"))
	moved := map[digest.Digest]bool{}
	for _, m := range f.l.Members {
		if moved[m.Digest] {
			continue
		}
		rc, err := f.s.Fetch(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		w.StartExtent()
		_, err = io.Copy(w, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := w.EndExtent(m); err != nil {
			t.Fatal(err)
		}
		moved[m.Digest] = true
	}
	host := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: w.Digest(), Size: w.Size()}
	b := f.s.NewBatch()
	if err := b.Add(ctx, w, host); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for d := range moved {
		if err := os.Remove(f.s.BlobPath(d)); err != nil {
			t.Fatal(err)
		}
		if ok, err := f.s.Exists(ctx, d); !ok || err != nil {
			t.Fatalf("member %s not found as an extent: %v", d, err)
		}
	}
	_, addr, _ := startServer(t, f.s, Options{})
	code, body, _ := fetchLayer(t, addr, f.blobPath())
	if code != http.StatusOK || !bytes.Equal(body, f.want) {
		t.Fatalf("cold layer from extents: status %d, %d bytes (want %d, same bytes)", code, len(body), len(f.want))
	}
	for _, p := range f.parts {
		if p.Kind != layer.PartMember {
			continue
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+f.blobPath(), nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", p.Offset+1, p.Offset+p.Size-2))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, f.want[p.Offset+1:p.Offset+p.Size-1]) {
			t.Fatalf("range inside member %s: status %d, %d bytes", p.Member, resp.StatusCode, len(got))
		}
	}
}
