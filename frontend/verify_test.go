package frontend

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestVerifyMain(t *testing.T) {
	dir := t.TempDir()
	put := func(d digest.Digest, data string) {
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	good := digest.FromString("good")
	put(good, "good")
	bad := digest.FromString("bad")
	put(bad, "tampered")
	missing := digest.FromString("missing")

	var stderr bytes.Buffer
	if code := VerifyMain([]string{dir, good.String()}, &stderr); code != 0 {
		t.Fatalf("good block: exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	code := VerifyMain([]string{dir, good.String(), bad.String(), missing.String()}, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	out := stderr.String()
	for _, want := range []string{
		"block " + bad.String() + ": content does not match its digest (the bytes at blobs/sha256/" + bad.Encoded() + " hash to " + digest.FromString("tampered").String(),
		"block " + missing.String() + ": not found in the block store",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, good.String()) {
		t.Errorf("the good block is reported:\n%s", out)
	}
	if code := VerifyMain(nil, &stderr); code != 2 {
		t.Errorf("no arguments: exit %d, want 2", code)
	}
}
