package bundle

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

// An inventory says which blobs a store holds, compactly enough to carry
// back from a site by hand. The file is gzip of:
//
//	blockfile-inventory/v1 sha256 <prefix bytes> <count>\n
//	<count> sha256 digests truncated to <prefix bytes>, binary, sorted, distinct
//
// With the default 16-byte prefix a digest costs 16 bytes (sha256 output
// does not compress). A prefix can claim a blob the store lacks only if
// another blob's sha256 starts with the same 128 bits: for n blobs at the
// site and m in a bundle's images the chance is below n*m/2^128, and even
// then nothing breaks: the bundle leaves the blob out and lists it in
// requires, and apply's prerequisite check (full digest and size) fails
// cleanly before writing anything.
const (
	inventoryMagic = "blockfile-inventory/v1"

	// DefaultPrefix is the number of digest bytes an inventory keeps.
	DefaultPrefix = 16

	minPrefix       = 8
	maxInventoryLen = 1 << 22 // 4 M blobs: far above any store; bounds memory (docs/FORMAT.md section 9)
)

// Inventory is a set of sha256 digests, possibly truncated.
type Inventory struct {
	prefix int
	keys   []byte // sorted, distinct, len = prefix * count
}

// NewInventory builds an inventory of digests (non-sha256 ones are ignored:
// the store only holds sha256) keeping prefix bytes of each.
func NewInventory(digests []digest.Digest, prefix int) (*Inventory, error) {
	if prefix < minPrefix || prefix > 32 {
		return nil, fmt.Errorf("inventory prefix %d: want %d to 32 bytes", prefix, minPrefix)
	}
	keys := make([][]byte, 0, len(digests))
	for _, d := range digests {
		if d.Algorithm() != digest.SHA256 {
			continue
		}
		raw, err := hex.DecodeString(d.Encoded())
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("inventory: digest %q is not a sha256 digest", d)
		}
		keys = append(keys, raw[:prefix])
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	return &Inventory{prefix: prefix, keys: bytes.Join(keys, nil)}, nil
}

// Len is the number of digests in the inventory.
func (inv *Inventory) Len() int { return len(inv.keys) / inv.prefix }

// Prefix is the number of digest bytes kept per blob.
func (inv *Inventory) Prefix() int { return inv.prefix }

// Has reports whether the inventory holds a digest starting like d.
func (inv *Inventory) Has(d digest.Digest) bool {
	if d.Algorithm() != digest.SHA256 {
		return false
	}
	raw, err := hex.DecodeString(d.Encoded())
	if err != nil || len(raw) != 32 {
		return false
	}
	key := raw[:inv.prefix]
	n := inv.Len()
	lo, hi := 0, n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch c := bytes.Compare(inv.keys[m*inv.prefix:(m+1)*inv.prefix], key); {
		case c == 0:
			return true
		case c < 0:
			lo = m + 1
		default:
			hi = m
		}
	}
	return false
}

// WriteTo writes the inventory file (gzip) to w.
func (inv *Inventory) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	zw, err := gzip.NewWriterLevel(cw, gzip.BestCompression)
	if err != nil {
		return 0, err
	}
	if _, err := fmt.Fprintf(zw, "%s sha256 %d %d\n", inventoryMagic, inv.prefix, inv.Len()); err != nil {
		return cw.n, fmt.Errorf("writing inventory: %w", err)
	}
	if _, err := zw.Write(inv.keys); err != nil {
		return cw.n, fmt.Errorf("writing inventory: %w", err)
	}
	if err := zw.Close(); err != nil {
		return cw.n, fmt.Errorf("writing inventory: %w", err)
	}
	return cw.n, nil
}

// ReadInventory reads an inventory file. It refuses anything but a
// complete, well-formed inventory: a damaged one could make a bundle assume
// blobs the site lacks (apply would then fail cleanly, but late).
func ReadInventory(r io.Reader) (*Inventory, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("inventory: not a gzip file: %w", err)
	}
	defer zr.Close()
	br := bufio.NewReader(io.LimitReader(zr, 1<<30))
	line, err := br.ReadString('\n')
	if err != nil || len(line) > 128 {
		return nil, fmt.Errorf("inventory: no header line: %w", errOr(err, "line too long"))
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != inventoryMagic || f[1] != "sha256" {
		return nil, fmt.Errorf("inventory: header %q: want %q sha256 <prefix> <count>", strings.TrimSpace(line), inventoryMagic)
	}
	prefix, err1 := strconv.Atoi(f[2])
	count, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil || prefix < minPrefix || prefix > 32 || count < 0 || count > maxInventoryLen {
		return nil, fmt.Errorf("inventory: header %q: bad prefix or count", strings.TrimSpace(line))
	}
	// Memory grows with the digests actually read, each checked in order
	// as it arrives, never with the count a header announces: a few bytes
	// of gzip claiming millions of digests cost nothing.
	keys := make([]byte, 0, min(prefix*count, 1<<20))
	key := make([]byte, prefix)
	for i := range count {
		if _, err := io.ReadFull(br, key); err != nil {
			return nil, fmt.Errorf("inventory: truncated: %d digests announced, %d read: %w", count, i, noEOF(err))
		}
		if i > 0 && bytes.Compare(keys[len(keys)-prefix:], key) >= 0 {
			return nil, fmt.Errorf("inventory: digest %d is out of order", i)
		}
		keys = append(keys, key...)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("inventory: data after the %d announced digests: %w", count, errOr(err, "trailing bytes"))
	}
	return &Inventory{prefix: prefix, keys: keys}, nil
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
