package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLazyRemembersFailure(t *testing.T) {
	var l lazy
	calls := 0
	f := func() (string, error) { calls++; return "", errors.New("boom") }
	for range 3 {
		if _, err := l.get(f); err == nil || err.Error() != "boom" {
			t.Fatalf("get = %v, want boom", err)
		}
	}
	if calls != 1 {
		t.Fatalf("start function ran %d times, want 1", calls)
	}
}

func TestModuleKeyFollowsGoSum(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module x\n")
	write("go.sum", "a v1 h1:x\n")
	k1, err := moduleKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	write("go.sum", "a v2 h1:y\n")
	k2, err := moduleKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k1 == k2 {
		t.Fatal("changing go.sum did not change the cache key")
	}
}

// A daemon that exits before answering is reported at once, with its log.
func TestWaitReadyReportsEarlyExit(t *testing.T) {
	e := &Env{Dir: t.TempDir()}
	defer e.Close()
	p, err := e.spawn("early-exit", "/bin/sh", "-c", "echo cannot start: no such thing >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = e.waitReady(context.Background(), p, time.Minute, func(context.Context) error { return errors.New("not yet") })
	if err == nil {
		t.Fatal("waitReady succeeded for a process that exited")
	}
	if !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "cannot start: no such thing") {
		t.Fatalf("error does not name the exit and the log: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("waitReady took %s to notice the exit", time.Since(start))
	}
}

// Close stops a running daemon by its pid.
func TestCloseStopsDaemons(t *testing.T) {
	e := &Env{Dir: t.TempDir()}
	p, err := e.spawn("sleeper", "/bin/sh", "-c", "exec sleep 600")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	default:
		t.Fatal("daemon still running after Close")
	}
	if _, err := e.spawn("late", "/bin/true"); err == nil {
		t.Fatal("spawn after Close succeeded")
	}
}
