package tree

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
)

// hashFile is what a store's add does, minus the storing: the block of a file
// is the sha256 of its bytes.
func hashFile(_ context.Context, p string) (blocks.Ref, error) {
	f, err := os.Open(p)
	if err != nil {
		return blocks.Ref{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return blocks.Ref{}, err
	}
	return blocks.Ref{Digest: digest.NewDigest(digest.SHA256, h), Size: n}, nil
}

// makeFolder writes a small JDK-like folder under dir.
func makeFolder(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	syscall.Umask(0o022)
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "lib"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "lib", "security"), 0o750))
	must(os.MkdirAll(filepath.Join(dir, "empty"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "bin", "java"), []byte("#!/bin/sh\necho java\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "lib", "modules"), bytes.Repeat([]byte("m"), 100000), 0o644))
	must(os.WriteFile(filepath.Join(dir, "lib", "security", "cacerts"), []byte("certs"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "lib.txt"), []byte("sorts before lib/ in byte order"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "release"), nil, 0o644))
	must(os.WriteFile(filepath.Join(dir, "bin", "suid"), []byte("x"), 0o755))
	must(os.Chmod(filepath.Join(dir, "bin", "suid"), 0o755|os.ModeSetuid))
	must(os.Symlink("../lib/modules", filepath.Join(dir, "bin", "modules-link")))
	// Same content as lib/security/cacerts: the same block, twice.
	must(os.WriteFile(filepath.Join(dir, "cacerts-copy"), []byte("certs"), 0o644))
}

func TestBuildGolden(t *testing.T) {
	dir := t.TempDir()
	makeFolder(t, dir)
	doc, tr, err := Build(context.Background(), dir, hashFile)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"blockfile.tree":1,"entries":[` +
		`{"path":"bin","type":"dir","mode":"0755"},` +
		`{"path":"bin/java","type":"file","mode":"0755","size":20,"digest":"` + string(digest.FromString("#!/bin/sh\necho java\n")) + `"},` +
		`{"path":"bin/modules-link","type":"symlink","mode":"0777","target":"../lib/modules"},` +
		`{"path":"bin/suid","type":"file","mode":"4755","size":1,"digest":"` + string(digest.FromString("x")) + `"},` +
		`{"path":"cacerts-copy","type":"file","mode":"0644","size":5,"digest":"` + string(digest.FromString("certs")) + `"},` +
		`{"path":"empty","type":"dir","mode":"0700"},` +
		`{"path":"lib","type":"dir","mode":"0755"},` +
		`{"path":"lib.txt","type":"file","mode":"0644","size":31,"digest":"` + string(digest.FromString("sorts before lib/ in byte order")) + `"},` +
		`{"path":"lib/modules","type":"file","mode":"0644","size":100000,"digest":"` + string(digest.FromBytes(bytes.Repeat([]byte("m"), 100000))) + `"},` +
		`{"path":"lib/security","type":"dir","mode":"0750"},` +
		`{"path":"lib/security/cacerts","type":"file","mode":"0600","size":5,"digest":"` + string(digest.FromString("certs")) + `"},` +
		`{"path":"release","type":"file","mode":"0644","digest":"` + string(digest.FromString("")) + `"}` +
		"]}\n"
	if string(doc) != want {
		t.Fatalf("document:\n%s\nwant:\n%s", doc, want)
	}
	if len(tr.Entries) != 12 {
		t.Fatalf("%d entries", len(tr.Entries))
	}
	// Distinct blocks: cacerts counted once.
	if n := len(tr.Blocks()); n != 6 {
		t.Fatalf("Blocks() = %d, want 6", n)
	}
	// The document parses back to the same tree.
	back, err := Parse(bytes.NewReader(doc), DefaultLimit)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Entries) != len(tr.Entries) || back.Entries[3] != tr.Entries[3] {
		t.Fatalf("Parse(Build) differs: %+v", back.Entries)
	}
	if m, _ := back.Entries[3].Perm(); m.Perm() != 0o755 || m&os.ModeSetuid == 0 {
		t.Fatalf("Perm of 4755 = %v", m)
	}
}

// The same content elsewhere, with other times and owners, is the same tree.
func TestBuildDeterministic(t *testing.T) {
	a, b := t.TempDir(), filepath.Join(t.TempDir(), "elsewhere", "jdk")
	makeFolder(t, a)
	makeFolder(t, b)
	when := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	filepath.Walk(b, func(p string, _ os.FileInfo, _ error) error {
		os.Chtimes(p, when, when)
		if os.Geteuid() == 0 {
			os.Lchown(p, 1234, 5678)
		}
		return nil
	})
	// chown clears setuid (kernel rule); the modes must match, so set it again.
	os.Chmod(filepath.Join(b, "bin", "suid"), 0o755|os.ModeSetuid)
	os.Chtimes(filepath.Join(b, "bin", "suid"), when, when)
	docA, _, err := Build(context.Background(), a, hashFile)
	if err != nil {
		t.Fatal(err)
	}
	docB, _, err := Build(context.Background(), b, hashFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docA, docB) || DocRef(docA) != DocRef(docB) {
		t.Fatalf("same content gave different documents:\n%s\n%s", docA, docB)
	}
	// And a content change does change it.
	os.WriteFile(filepath.Join(b, "release"), []byte("v2"), 0o644)
	docC, _, _ := Build(context.Background(), b, hashFile)
	if bytes.Equal(docA, docC) {
		t.Fatal("a changed file did not change the document")
	}
}

func TestBuildRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	_, _, err := Build(context.Background(), dir, hashFile)
	if err == nil || !strings.Contains(err.Error(), "fifo") {
		t.Fatalf("Build = %v, want an error naming the fifo", err)
	}
}

func TestBuildPassesAddErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	boom := errors.New("store full")
	_, _, err := Build(context.Background(), dir, func(context.Context, string) (blocks.Ref, error) { return blocks.Ref{}, boom })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), filepath.Join(dir, "f")) {
		t.Fatalf("Build = %v", err)
	}
}

func TestBuildEmptyFolder(t *testing.T) {
	doc, _, err := Build(context.Background(), t.TempDir(), hashFile)
	if err != nil || string(doc) != `{"blockfile.tree":1,"entries":[]}`+"\n" {
		t.Fatalf("Build(empty) = %q, %v", doc, err)
	}
	if _, err := Parse(bytes.NewReader(doc), DefaultLimit); err != nil {
		t.Fatal(err)
	}
}

func TestParseRejects(t *testing.T) {
	d := string(digest.FromString("x"))
	doc := func(entries ...string) string {
		return `{"blockfile.tree":1,"entries":[` + strings.Join(entries, ",") + "]}\n"
	}
	file := func(p string) string {
		return `{"path":"` + p + `","type":"file","mode":"0644","size":1,"digest":"` + d + `"}`
	}
	dir := func(p string) string { return `{"path":"` + p + `","type":"dir","mode":"0755"}` }
	cases := map[string]string{
		"version 2":          `{"blockfile.tree":2,"entries":[]}` + "\n",
		"no entries":         `{"blockfile.tree":1}` + "\n",
		"unknown key":        `{"blockfile.tree":1,"entries":[],"x":1}` + "\n",
		"absolute":           doc(file("/etc/passwd")),
		"dotdot":             doc(file("../x")),
		"dotdot inside":      doc(dir("a"), file("a/../../x")),
		"dot":                doc(dir(".")),
		"unclean":            doc(dir("a"), file("a//b")),
		"trailing slash":     doc(dir("a/")),
		"duplicate":          doc(file("a"), file("a")),
		"unsorted":           doc(file("b"), file("a")),
		"parent missing":     doc(file("a/b")),
		"parent is file":     doc(file("a"), file("a/b")),
		"parent is symlink":  doc(`{"path":"a","type":"symlink","mode":"0777","target":"/etc"}`, file("a/passwd")),
		"bad type":           doc(`{"path":"a","type":"fifo","mode":"0644"}`),
		"bad mode":           doc(`{"path":"a","type":"dir","mode":"755"}`),
		"mode too big":       doc(`{"path":"a","type":"dir","mode":"17777"}`),
		"file no digest":     doc(`{"path":"a","type":"file","mode":"0644","size":1}`),
		"file bad digest":    doc(`{"path":"a","type":"file","mode":"0644","size":1,"digest":"sha256:zz"}`),
		"negative size":      doc(`{"path":"a","type":"file","mode":"0644","size":-1,"digest":"` + d + `"}`),
		"dir with digest":    doc(`{"path":"a","type":"dir","mode":"0755","digest":"` + d + `"}`),
		"symlink no target":  doc(`{"path":"a","type":"symlink","mode":"0777"}`),
		"not canonical":      `{"blockfile.tree":1, "entries":[]}` + "\n",
		"no newline":         `{"blockfile.tree":1,"entries":[]}`,
		"key order":          doc(`{"type":"dir","path":"a","mode":"0755"}`),
		"explicit zero size": doc(`{"path":"a","type":"file","mode":"0644","size":0,"digest":"` + d + `"}`),
		"trailing data":      `{"blockfile.tree":1,"entries":[]}` + "\n{}",
		"not json":           "hello",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(strings.NewReader(in), DefaultLimit); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%s) = %v, want ErrInvalid", in, err)
			}
		})
	}
	// The good forms of the same pieces parse.
	good := doc(dir("a"), file("a/b"), `{"path":"a/c","type":"symlink","mode":"0777","target":"../../anywhere"}`)
	if _, err := Parse(strings.NewReader(good), DefaultLimit); err != nil {
		t.Fatalf("Parse(good) = %v", err)
	}
	if _, err := Parse(strings.NewReader(good), 10); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Parse over the limit = %v", err)
	}
}

// A tree document is read up to its limit and no further (docs/FORMAT.md
// section 9): one byte more is refused, whatever follows.
func TestParseRefusesOversizedDocument(t *testing.T) {
	const limit = 4096
	r := io.MultiReader(strings.NewReader(`{"blockfile.tree":1,"entries":[`), strings.NewReader(strings.Repeat(" ", limit)))
	if _, err := Parse(r, limit); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Parse of a document over %d bytes = %v, want ErrInvalid naming the bound", limit, err)
	}
}
