package bundle

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

func someDigests(n int, salt string) []digest.Digest {
	var ds []digest.Digest
	for i := 0; i < n; i++ {
		ds = append(ds, digest.FromString(fmt.Sprintf("%s %d", salt, i)))
	}
	return ds
}

func TestInventoryRoundTrip(t *testing.T) {
	const n = 10000
	in := someDigests(n, "held")
	in = append(in, in[:10]...) // duplicates count once
	inv, err := NewInventory(in, DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	size, err := inv.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(buf.Len()) {
		t.Errorf("WriteTo says %d bytes, wrote %d", size, buf.Len())
	}
	// "A few bytes per blob": the prefix plus gzip framing and the header.
	if per := float64(size) / n; per > DefaultPrefix+0.1 {
		t.Errorf("%.2f bytes per blob, want at most %.1f", per, DefaultPrefix+0.1)
	}
	t.Logf("inventory of %d blobs: %d bytes (%.2f per blob)", n, size, float64(size)/n)

	got, err := ReadInventory(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if got.Len() != n || got.Prefix() != DefaultPrefix {
		t.Fatalf("read back %d digests of %d bytes, want %d of %d", got.Len(), got.Prefix(), n, DefaultPrefix)
	}
	for _, d := range in {
		if !got.Has(d) {
			t.Fatalf("inventory lost %s", d)
		}
	}
	for _, d := range someDigests(1000, "not held") {
		if got.Has(d) {
			t.Fatalf("inventory claims %s", d)
		}
	}
}

func TestInventoryRejectsDamage(t *testing.T) {
	inv, err := NewInventory(someDigests(100, "x"), DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := inv.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	for _, cut := range []int{0, 10, len(full) / 2, len(full) - 1} {
		if _, err := ReadInventory(bytes.NewReader(full[:cut])); err == nil {
			t.Errorf("inventory cut at %d of %d bytes was accepted", cut, len(full))
		}
	}
	raw := func(s string) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write([]byte(s))
		zw.Close()
		return b.Bytes()
	}
	key := func(b byte) string { return string(bytes.Repeat([]byte{b}, 16)) }
	for name, body := range map[string]string{
		"fewer than announced": "blockfile-inventory/v1 sha256 16 2\n" + key(1),
		"more than announced":  "blockfile-inventory/v1 sha256 16 1\n" + key(1) + key(2),
		"out of order":         "blockfile-inventory/v1 sha256 16 2\n" + key(2) + key(1),
		"duplicate":            "blockfile-inventory/v1 sha256 16 2\n" + key(1) + key(1),
		"short prefix":         "blockfile-inventory/v1 sha256 4 1\n" + key(1)[:4],
		"other magic":          "blockfile-inventory/v2 sha256 16 1\n" + key(1),
	} {
		if _, err := ReadInventory(bytes.NewReader(raw(body))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
