package delta

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// relinked returns base with a block inserted and every 8-byte word of a
// region shifted by a constant, as a relinked binary's pointers are.
func relinked(base []byte, seed int64) []byte {
	r := rand.New(rand.NewSource(seed))
	t := append([]byte{}, base[:len(base)/3]...)
	ins := make([]byte, 3000)
	r.Read(ins)
	t = append(t, ins...)
	rest := append([]byte{}, base[len(base)/3:]...)
	for i := 0; i+8 <= len(rest)/2; i += 64 {
		v := binary.LittleEndian.Uint64(rest[i:])
		binary.LittleEndian.PutUint64(rest[i:], v+0x1000)
	}
	return append(t, rest...)
}

func roundTrip(t *testing.T, base, target []byte) []byte {
	t.Helper()
	var d bytes.Buffer
	if err := Encode(context.Background(), &d, base, target); err != nil {
		t.Fatal(err)
	}
	dec, err := NewDecoder(bytes.NewReader(d.Bytes()), base)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got, err := io.ReadAll(dec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, target) {
		t.Fatalf("rebuilt %d bytes differ from the target's %d", len(got), len(target))
	}
	return d.Bytes()
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	base := make([]byte, 1<<20)
	r.Read(base)
	target := relinked(base, 2)
	d := roundTrip(t, base, target)
	// A relinked region costs its few differing bytes, not its size.
	if len(d) > 40<<10 {
		t.Errorf("delta of a relinked 1 MiB file is %d bytes, want < 40 KiB", len(d))
	}
	// Degenerate inputs.
	for _, c := range []struct{ base, target []byte }{
		{nil, nil}, {nil, []byte("new")}, {[]byte("old"), nil}, {[]byte("short"), []byte("shorter")},
		{bytes.Repeat([]byte{0}, 100000), bytes.Repeat([]byte{0}, 200001)},
		{base, base}, {base[:5000], base},
	} {
		roundTrip(t, c.base, c.target)
	}
}

func TestDecoderRefuses(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	base := make([]byte, 64<<10)
	r.Read(base)
	target := relinked(base, 4)
	var good bytes.Buffer
	if err := Encode(context.Background(), &good, base, target); err != nil {
		t.Fatal(err)
	}
	frame := func(hdrTarget int, body []byte) []byte {
		var b bytes.Buffer
		b.WriteString(Magic)
		b.Write(binary.AppendUvarint(nil, uint64(len(base))))
		b.Write(binary.AppendUvarint(nil, uint64(hdrTarget)))
		b.Write(make([]byte, 32))
		zw, _ := zstd.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		return b.Bytes()
	}
	rec := func(seek int64, n, m uint64) []byte {
		b := binary.AppendVarint(nil, seek)
		b = binary.AppendUvarint(b, n)
		return binary.AppendUvarint(b, m)
	}
	cases := map[string][]byte{
		"truncated":      good.Bytes()[:good.Len()-10],
		"other base":     append([]byte(Magic), 1, 1),
		"empty record":   frame(10, bytes.Repeat(rec(0, 0, 0), 1000)),
		"seek out":       frame(10, rec(int64(len(base))+1, 1, 0)),
		"seek negative":  frame(10, rec(-1, 1, 0)),
		"diff past base": frame(10, append(rec(int64(len(base))-2, 3, 0), 0, 0, 0)),
		"too long":       frame(2, append(rec(0, 0, 3), 1, 2, 3)),
		"trailing":       frame(1, append(rec(0, 0, 1), 1, 9)),
		"wrong digest":   frame(1, append(rec(0, 0, 1), 1)),
		"not a delta":    []byte("hello, world, this is not a delta at all"),
	}
	for name, d := range cases {
		dec, err := NewDecoder(bytes.NewReader(d), base)
		if err == nil {
			_, err = io.Copy(io.Discard, dec)
			dec.Close()
		}
		if err == nil {
			t.Errorf("%s: decoded without error", name)
		} else if name != "truncated" && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v does not wrap ErrCorrupt", name, err)
		}
	}
}

// FuzzDecode: any input either fails or yields exactly the declared number
// of bytes hashing to the declared digest, within bounded work.
func FuzzDecode(f *testing.F) {
	base := bytes.Repeat([]byte("0123456789abcdef"), 512)
	var d bytes.Buffer
	Encode(context.Background(), &d, base, relinked(base, 5))
	f.Add(d.Bytes())
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		dec, err := NewDecoder(bytes.NewReader(data), base)
		if err != nil {
			return
		}
		defer dec.Close()
		n, err := io.Copy(io.Discard, io.LimitReader(dec, 1<<24))
		if err == nil && n != dec.Header().TargetSize {
			t.Fatalf("decoded %d bytes, header says %d", n, dec.Header().TargetSize)
		}
	})
}

// addBytes is a bytewise add mod 256, whatever the alignment and length.
func TestAddBytes(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for n := range 40 {
		q, b := make([]byte, n), make([]byte, n)
		r.Read(q)
		r.Read(b)
		want := make([]byte, n)
		for i := range q {
			want[i] = q[i] + b[i]
		}
		addBytes(q, b)
		if !bytes.Equal(q, want) {
			t.Fatalf("n=%d: %x, want %x", n, q, want)
		}
	}
}
