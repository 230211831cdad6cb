package main

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// sums returns relative path -> sha256 of every file under dir.
func sums(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGenerateIsDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if err := generate(d, "v1"); err != nil {
			t.Fatal(err)
		}
	}
	sa, sb := sums(t, a), sums(t, b)
	if len(sa) != len(libs)+1 {
		t.Fatalf("v1 has %d files, want %d jars + app.jar", len(sa), len(libs))
	}
	for k, v := range sa {
		if sb[k] != v {
			t.Errorf("%s differs between two runs", k)
		}
	}
}

func TestV2BumpsOneLibAndTheApp(t *testing.T) {
	v1, v2 := t.TempDir(), t.TempDir()
	if err := generate(v1, "v1"); err != nil {
		t.Fatal(err)
	}
	if err := generate(v2, "v2"); err != nil {
		t.Fatal(err)
	}
	// Files of v2 that v1 does not hold with the same content.
	s1 := map[string]bool{}
	for k, v := range sums(t, v1) {
		s1[k+"@"+v] = true
	}
	var changed []string
	for k, v := range sums(t, v2) {
		if !s1[k+"@"+v] {
			changed = append(changed, k)
		}
	}
	slices.Sort(changed)
	want := []string{"app.jar", "libs/jackson-databind-2.17.1.jar"}
	if !slices.Equal(changed, want) {
		t.Fatalf("v2 changes %v, want %v", changed, want)
	}
}

func TestJarsAreZipsWithManifest(t *testing.T) {
	dir := t.TempDir()
	if err := generate(dir, "v1"); err != nil {
		t.Fatal(err)
	}
	zr, err := zip.OpenReader(filepath.Join(dir, "app.jar"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	f, err := zr.Open("META-INF/MANIFEST.MF")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if len(line) > 72 {
			t.Errorf("manifest line longer than 72 bytes: %q", line)
		}
	}
	if !strings.Contains(string(b), "Main-Class: com.example.orders.Main") {
		t.Errorf("manifest lacks Main-Class:\n%s", b)
	}
}
