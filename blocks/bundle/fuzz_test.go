package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fuzzBundle is a small real bundle (v1 -> v2 of the synthetic images) as
// the seed of the bundle fuzz targets.
func fuzzBundle(f *testing.F) []byte {
	src := openStore(f)
	putSynth(f, src, "app:v1", synthV1)
	putSynth(f, src, "app:v2", synthV2)
	p := filepath.Join(f.TempDir(), "seed.bundle")
	if _, err := Create(context.Background(), src, []string{"app:v2"}, p, CreateOptions{From: []string{"app:v1"}}); err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		f.Fatal(err)
	}
	return data
}

// FuzzReader: whatever the file, the bundle reader never panics, never
// allocates past its limits, and returns only blobs whose bytes hash to
// the digest and size its checked header lists.
func FuzzReader(f *testing.F) {
	seed := fuzzBundle(f)
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(seed[:1024])
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "b.bundle")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Open(p)
		if err != nil {
			return
		}
		defer r.Close()
		for {
			b, rd, err := r.Next()
			if err != nil {
				return
			}
			got, err := io.ReadAll(rd)
			if err != nil {
				continue // a mismatch is reported at EOF: the reader did its job
			}
			e := b.entry()
			if digest.FromBytes(got) != e.Digest || int64(len(got)) != e.Size {
				t.Fatalf("blob %s: the reader returned %d bytes hashing to %s without an error", b.Digest, len(got), digest.FromBytes(got))
			}
		}
	})
}

// FuzzHeader: whatever the JSON, decoding and checking a header never
// panics, and a header that passes the check has valid names, sha256
// digests, totals that add up, and manifests first.
func FuzzHeader(f *testing.F) {
	seed := fuzzBundle(f)
	h, err := func() (*Header, error) {
		p := filepath.Join(f.TempDir(), "s.bundle")
		os.WriteFile(p, seed, 0o644)
		return ReadHeader(p)
	}()
	if err != nil {
		f.Fatal(err)
	}
	js, _ := json.Marshal(h)
	f.Add(js)
	f.Add([]byte(`{"mediaType":"application/vnd.blockfile.bundle.v1+json","version":1,"images":[{"name":".."}]}`))
	f.Add(bytes.Replace(js, []byte(`"kind":"index"`), []byte(`"kind":"block"`), 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Header
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if dec.Decode(&h) != nil || h.check() != nil {
			return
		}
		if t := totals(h.Blobs); t.Blobs != h.Adds.Blobs || t.Bytes != h.Adds.Bytes {
			panic("adds do not add up")
		}
		meta := true
		for _, b := range h.Blobs {
			if b.Digest.Validate() != nil || b.Size < 0 {
				t.Fatalf("accepted blob %q (%d bytes)", b.Digest, b.Size)
			}
			if !b.Kind.isManifest() {
				meta = false
			} else if !meta {
				t.Fatalf("manifest %s after layer data", b.Digest)
			}
		}
		for _, im := range h.Images {
			if _, err := OutputFor("oci:/out/{name}", im.Name); err != nil {
				t.Fatalf("accepted image name %q: %v", im.Name, err)
			}
		}
	})
}

// FuzzReadInventory: whatever the file, ReadInventory never panics nor
// allocates by what a header announces, and an inventory it accepts
// writes back to the same digests.
func FuzzReadInventory(f *testing.F) {
	inv, err := NewInventory([]digest.Digest{digest.FromString("a"), digest.FromString("b"), digest.FromString("c")}, DefaultPrefix)
	if err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := inv.WriteTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:buf.Len()/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := ReadInventory(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if _, err := inv.WriteTo(&out); err != nil {
			t.Fatal(err)
		}
		back, err := ReadInventory(&out)
		if err != nil || back.Len() != inv.Len() || back.Prefix() != inv.Prefix() || !bytes.Equal(back.keys, inv.keys) {
			t.Fatalf("an accepted inventory does not round-trip: %v", err)
		}
	})
}
