package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
)

// Verbs that read a store never create one: a mistyped --store is an
// error naming the directory, and the directory stays absent.
func TestCLIReadVerbsNeedAStore(t *testing.T) {
	bin := buildBlockfile(t)
	dir := filepath.Join(t.TempDir(), "typo")
	tmp := t.TempDir()
	for _, args := range [][]string{
		{"ls"},
		{"verify"},
		{"verify", "--json"},
		{"gc"},
		{"inspect", "app:v1"},
		{"hydrate", "app:v1", "oci:" + filepath.Join(tmp, "out")},
		{"rm", "app:v1"},
		{"tag", "app:v1", "app:v2"},
		{"block", "ls"},
		{"inventory", "-o", filepath.Join(tmp, "inv")},
		{"bundle", "create", "--full", "app:v1", "-o", filepath.Join(tmp, "b.bundle")},
	} {
		_, errOut, code := run(t, bin, dir, args...)
		if code != 1 || !strings.Contains(errOut, "no store at "+dir) {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and \"no store at %s\"", strings.Join(args, " "), code, errOut, dir)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s created the store directory (%v)", strings.Join(args, " "), err)
		}
	}
	// A verb that writes a new store creates it.
	jar := filepath.Join(tmp, "a.jar")
	os.WriteFile(jar, []byte("jar"), 0o644)
	if _, errOut, code := run(t, bin, dir, "block", "add", jar); code != 0 {
		t.Fatalf("block add into a new store: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		t.Fatalf("block add did not create the store: %v", err)
	}
}

// verify has nothing to vouch for in an empty store: it is not "ok".
func TestCLIVerifyEmptyStoreFails(t *testing.T) {
	bin := buildBlockfile(t)
	dir := filepath.Join(t.TempDir(), "store")
	if _, err := store.Create(dir); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, bin, dir, "verify")
	if code != 1 || strings.Contains(out, "ok") || !strings.Contains(errOut, "is empty") {
		t.Fatalf("verify of an empty store: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	out, _, code = run(t, bin, dir, "verify", "--json")
	var vr struct {
		OK    bool `json:"ok"`
		Empty bool `json:"empty"`
	}
	if code != 1 || json.Unmarshal([]byte(out), &vr) != nil || vr.OK || !vr.Empty {
		t.Fatalf("verify --json of an empty store: exit %d\n%s", code, out)
	}
}

// tag gives an image a second name, rm removes names, and gc frees the
// blobs once no name reaches them.
func TestCLITagRmGC(t *testing.T) {
	bin := buildBlockfile(t)
	dir := filepath.Join(t.TempDir(), "store")
	s, err := store.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	index, std, layer := putImage(t, s, "app:v1")

	if out, errOut, code := run(t, bin, dir, "tag", "app:v1", "app:prod"); code != 0 || !strings.Contains(out, "app:prod -> "+string(index.Digest)) {
		t.Fatalf("tag: exit %d\n%s%s", code, out, errOut)
	}
	if got, err := s.Resolve(ctx, "app:prod"); err != nil || got.Digest != index.Digest {
		t.Fatalf("app:prod resolves to %v, %v", got.Digest, err)
	}
	if _, errOut, code := run(t, bin, dir, "tag", "app:v1", "../evil"); code != 2 || !strings.Contains(errOut, "invalid image name") {
		t.Fatalf("tag to an invalid name: exit %d: %s", code, errOut)
	}
	if _, errOut, code := run(t, bin, dir, "tag", "nope", "app:x"); code != 1 || !strings.Contains(errOut, "nope") {
		t.Fatalf("tag of a missing name: exit %d: %s", code, errOut)
	}

	// rm one name: the other still holds everything.
	if out, _, code := run(t, bin, dir, "rm", "app:v1"); code != 0 || out != "untagged app:v1\n" {
		t.Fatalf("rm app:v1: exit %d: %q", code, out)
	}
	if out, _, code := run(t, bin, dir, "gc"); code != 0 || !strings.Contains(out, "freed 0 B in 0 blob(s)") {
		t.Fatalf("gc with app:prod left: exit %d\n%s", code, out)
	}
	// rm of a missing name fails, naming it, and still removes the others.
	out, errOut, code := run(t, bin, dir, "rm", "app:gone", "app:prod")
	if code != 1 || !strings.Contains(errOut, "app:gone") || out != "untagged app:prod\n" {
		t.Fatalf("rm app:gone app:prod: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	if tags, _ := s.Tags(ctx); len(tags) != 0 {
		t.Fatalf("tags left: %v", tags)
	}
	out, _, code = run(t, bin, dir, "gc")
	if code != 0 {
		t.Fatalf("gc: exit %d\n%s", code, out)
	}
	for _, d := range []ocispec.Descriptor{index, std, layer} {
		if !strings.Contains(out, "removed "+string(d.Digest)) {
			t.Errorf("gc did not remove %s:\n%s", d.Digest, out)
		}
		if ok, _ := s.Exists(ctx, d.Digest); ok {
			t.Errorf("%s is still in the store", d.Digest)
		}
	}
	if _, _, code := run(t, bin, dir, "verify"); code != 1 {
		t.Fatalf("verify of the emptied store: exit %d, want 1", code)
	}
}

// Names with terminal escapes, read from a store's index.json (another
// tool wrote it) or from a bundle, are never printed raw.
func TestCLINamesNeverPrintedRaw(t *testing.T) {
	bin := buildBlockfile(t)
	dir := filepath.Join(t.TempDir(), "store")
	s, err := store.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	putImage(t, s, "app:v1")
	const evil = "evil\x1b]0;pwned\x07\x1b[2J"
	// Another tool's index.json entry (store.Tag would refuse the name).
	indexPath := filepath.Join(dir, "index.json")
	var idx ocispec.Index
	b, _ := os.ReadFile(indexPath)
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	e := idx.Manifests[0]
	e.Annotations = map[string]string{ocispec.AnnotationRefName: evil}
	idx.Manifests = append(idx.Manifests, e)
	b, _ = json.Marshal(idx)
	if err := os.WriteFile(indexPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	raw := func(what, out, errOut string) {
		t.Helper()
		if strings.ContainsAny(out+errOut, "\x1b\x07") {
			t.Errorf("%s printed a raw escape:\nstdout %q\nstderr %q", what, out, errOut)
		}
	}
	out, errOut, code := run(t, bin, dir, "ls")
	raw("ls", out, errOut)
	if code != 0 || !strings.Contains(out, `"evil\x1b]0;pwned\a\x1b[2J"`) {
		t.Errorf("ls: exit %d, the name is not shown quoted:\n%s", code, out)
	}
	out, errOut, _ = run(t, bin, dir, "inspect", evil)
	raw("inspect", out, errOut)
	out, errOut, _ = run(t, bin, dir, "rm", evil+"x")
	raw("rm", out, errOut)

	// A bundle whose image is named with escapes: apply and bundle inspect
	// refuse it and say so without printing it raw.
	bundleFile := filepath.Join(t.TempDir(), "b.bundle")
	if _, errOut, code := run(t, bin, dir, "bundle", "create", "--full", "app:v1", "-o", bundleFile, "--progress", "none"); code != 0 {
		t.Fatalf("bundle create: exit %d: %s", code, errOut)
	}
	crafted := renameInBundle(t, bundleFile, "app:v1", evil)
	for _, args := range [][]string{{"bundle", "apply", "--progress", "none", crafted}, {"bundle", "inspect", crafted}} {
		out, errOut, code := run(t, bin, filepath.Join(t.TempDir(), "site"), args...)
		raw(args[1], out, errOut)
		if code != 1 || !strings.Contains(errOut, "invalid image name") {
			t.Errorf("%s: exit %d: %s", strings.Join(args[:2], " "), code, errOut)
		}
	}
	// And a name that would leave the output directory.
	crafted = renameInBundle(t, bundleFile, "app:v1", "..")
	outParent := t.TempDir()
	_, errOut, code = run(t, bin, filepath.Join(t.TempDir(), "site"), "bundle", "apply", "--progress", "none", "--output", "oci:"+filepath.Join(outParent, "out")+"/{name}", crafted)
	if code != 1 || !strings.Contains(errOut, "invalid image name") {
		t.Errorf("apply of a bundle naming its image \"..\": exit %d: %s", code, errOut)
	}
	if ents, _ := os.ReadDir(outParent); len(ents) != 0 {
		t.Errorf("apply wrote %v beside the output directory", ents)
	}
}

// renameInBundle copies a bundle with the image name from replaced by to in
// its header and index.json (the blobs are unchanged).
func renameInBundle(t *testing.T, file, from, to string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	oldJSON, _ := json.Marshal(from)
	newJSON, _ := json.Marshal(to)
	var buf bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(data)), tar.NewWriter(&buf)
	for {
		th, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if th.Name == "blockfile-bundle.json" || th.Name == "index.json" {
			body = bytes.ReplaceAll(body, oldJSON, newJSON)
			th.Size = int64(len(body))
		}
		if err := tw.WriteHeader(th); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "crafted.bundle")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
