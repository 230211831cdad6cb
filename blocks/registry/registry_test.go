package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	gtransport "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/store"
)

func TestSeenRecordsMostRecentFirstAndBounded(t *testing.T) {
	s, err := store.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("blob")
	other := digest.FromString("other")
	const reg = "registry.example:5000"
	if got := seenIn(s, reg, d); len(got) != 0 {
		t.Fatalf("fresh store: %v", got)
	}
	for i := range 6 {
		if err := recordSeen(s, reg, fmt.Sprintf("team/app%d", i), []digest.Digest{d}); err != nil {
			t.Fatal(err)
		}
	}
	// Seen again: moves to the front, not listed twice.
	if err := recordSeen(s, reg, "team/app3", []digest.Digest{d, other}); err != nil {
		t.Fatal(err)
	}
	got := seenIn(s, reg, d)
	want := []string{"team/app3", "team/app5", "team/app4", "team/app2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("seen %v, want %v (most recent first, at most %d)", got, want, maxSeenRepos)
	}
	if got := seenIn(s, reg, other); fmt.Sprint(got) != "[team/app3]" {
		t.Errorf("other blob: %v", got)
	}
	// Another registry knows nothing of it.
	if got := seenIn(s, "elsewhere.example", d); len(got) != 0 {
		t.Errorf("another registry: %v", got)
	}
}

// TestSeenOneFilePerRepository: a pull's hundreds of blobs make one record
// (the repository's), not a file per blob; a damaged record is ignored.
func TestSeenOneFilePerRepository(t *testing.T) {
	s, err := store.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for i := range 500 {
		ds = append(ds, digest.FromString(fmt.Sprint(i)))
	}
	if err := recordSeen(s, "r.example", "team/app", ds); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(seenRegistryDir(s, "r.example"))
	if err != nil || len(ents) != 1 {
		t.Fatalf("%d files for 500 blobs of one repository (%v)", len(ents), err)
	}
	if got := seenIn(s, "r.example", ds[499]); fmt.Sprint(got) != "[team/app]" {
		t.Fatalf("seen %v", got)
	}
	// A second repository with one of them; then a damaged record.
	if err := recordSeen(s, "r.example", "team/other", ds[:1]); err != nil {
		t.Fatal(err)
	}
	if got := seenIn(s, "r.example", ds[0]); fmt.Sprint(got) != "[team/other team/app]" {
		t.Fatalf("seen %v", got)
	}
	p := seenRepoPath(s, "r.example", "team/other")
	os.Remove(p) // replaced, as writers do (the index follows the directory)
	if err := os.WriteFile(p, []byte("not a record\nteam/other\n"+ds[0].Encoded()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := seenIn(s, "r.example", ds[0]); fmt.Sprint(got) != "[team/app]" {
		t.Fatalf("with a damaged record: %v", got)
	}
}

func TestSeenIgnoresDamagedRecords(t *testing.T) {
	s, err := store.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("blob")
	p, err := seenPath(s, "r.example", d)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("Not A Repo!\n\nok/repo\n"+string(make([]byte, 5000))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := seenIn(s, "r.example", d); fmt.Sprint(got) != "[ok/repo]" {
		t.Errorf("damaged record read as %v, want only the valid name", got)
	}
	if _, err := seenPath(s, "r.example", "md5:abc"); err == nil {
		t.Errorf("a non-sha256 digest made a record path")
	}
	if err := recordSeen(s, "r.example", "a\nb", []digest.Digest{d}); err == nil {
		t.Errorf("a repository name with a newline was recorded")
	}
}

func TestDefaultNameAndChildTag(t *testing.T) {
	for ref, want := range map[string]string{
		"127.0.0.1:5000/shop/app:v1": "shop/app:v1",
		"registry.example/app":       "app:latest",
		"registry.example/a/b@sha256:" + digest.FromString("x").Encoded(): "a/b@" + digest.FromString("x").String(),
	} {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := DefaultName(r); got != want {
			t.Errorf("DefaultName(%s) = %q, want %q", ref, got, want)
		}
	}
	d := digest.FromString("m")
	tag := ChildTag(d)
	if _, err := name.NewTag("r.example/app:" + tag); err != nil {
		t.Errorf("ChildTag %q is not a valid tag: %v", tag, err)
	}
	if tag == "sha256-"+d.Encoded() {
		t.Errorf("ChildTag is the referrers fallback tag")
	}
}

func TestRetryable(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, c := range []struct {
		ctx  context.Context
		err  error
		want bool
	}{
		{ctx, errors.New("connection reset by peer"), true},
		{ctx, &gtransport.Error{StatusCode: http.StatusBadGateway}, true},
		{ctx, &gtransport.Error{StatusCode: http.StatusTooManyRequests}, true},
		{ctx, &gtransport.Error{StatusCode: http.StatusUnauthorized}, false},
		{ctx, fmt.Errorf("x: %w", store.ErrDigestMismatch), false},
		{cancelled, errors.New("connection reset by peer"), false},
	} {
		if got := retryable(c.ctx, c.err); got != c.want {
			t.Errorf("retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
