package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestAdoptVerified(t *testing.T) {
	ctx := context.Background()
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hydrated layer bytes")
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	f, err := s.CreateTemp("t")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data[:5]); err != nil {
		t.Fatal(err)
	}
	if err := s.AdoptVerified(ctx, desc, f); err == nil {
		t.Fatal("adopted a short file")
	}
	f.Write(data[5:])
	// A live writer's file is not abandoned.
	if n, err := s.RemoveAbandonedTemps("t"); err != nil || n != 0 {
		t.Fatalf("RemoveAbandonedTemps with the writer alive: %d, %v", n, err)
	}
	if err := s.AdoptVerified(ctx, desc, f); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Fetch(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	// Readers of the open file go on after the rename.
	b := make([]byte, len(data))
	if _, err := f.ReadAt(b, 0); err != nil || string(b) != string(data) {
		t.Fatalf("read after adopt: %q %v", b, err)
	}
	// Not a temp file of this store.
	other, _ := os.CreateTemp(t.TempDir(), "x")
	defer other.Close()
	other.Write(data)
	if err := s.AdoptVerified(ctx, desc, other); err == nil {
		t.Error("adopted a file outside the ingest directory")
	}
}

func TestRemoveAbandonedTemps(t *testing.T) {
	s, err := Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.CreateTemp("t")
	if err != nil {
		t.Fatal(err)
	}
	name := f.Name()
	f.Close() // as a killed process's files: unlocked
	keep, err := s.CreateTemp("other")
	if err != nil {
		t.Fatal(err)
	}
	keep.Close()
	if n, err := s.RemoveAbandonedTemps("t"); err != nil || n != 1 {
		t.Fatalf("RemoveAbandonedTemps: %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Errorf("%s still there", name)
	}
	if _, err := os.Stat(keep.Name()); err != nil {
		t.Errorf("another prefix's file removed: %v", err)
	}
	if filepath.Dir(name) != filepath.Join(s.Root(), "blockfile", "ingest") {
		t.Errorf("temp file in %s", filepath.Dir(name))
	}
}
