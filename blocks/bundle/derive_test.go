package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/layer"
)

// The blocked form derived from a block-framed standard layer is the one
// export wrote, byte for byte: blocked layer, block set and members, also
// with more than 256 blocks in a row (two stub members), a block used twice
// and small files between blocks.
func TestDeriveBlockedFromStandard(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	many := map[string][]byte{"etc/os-release": []byte("ID=test\n")}
	for i := range 300 {
		many[fmt.Sprintf("usr/lib/jars/lib%03d.jar", i)] = jar(fmt.Sprint("lib", i), 5000+i)
	}
	many["usr/lib/jars/copy.jar"] = jar("lib7", 5007)
	export(t, s, "app:v1", append(deltaLayers("v1"), many))
	img, err := image.Resolve(ctx, s, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range img.Manifests {
		for _, l := range m.Layers {
			if !l.HasBlocks() {
				continue
			}
			n++
			rc, err := s.Fetch(ctx, l.Standard)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			d, err := deriveBlocked(ctx, rc, t.TempDir(), l.Blocked.MediaType, h)
			rc.Close()
			if err != nil {
				t.Fatalf("layer %s: %v", l.Standard.Digest, err)
			}
			defer d.close()
			if got := digest.NewDigest(digest.SHA256, h); got != l.Blocked.Digest || d.blocked.Digest != got || d.blocked.Size != l.Blocked.Size {
				t.Errorf("layer %s: derived blocked layer %s (%d bytes), exported %s (%d bytes)", l.Standard.Digest, d.blocked.Digest, d.blocked.Size, l.Blocked.Digest, l.Blocked.Size)
			}
			if d.setDesc.Digest != l.BlockSet.Digest || d.setDesc.Size != l.BlockSet.Size {
				t.Errorf("layer %s: derived block set %s, exported %s", l.Standard.Digest, d.setDesc.Digest, l.BlockSet.Digest)
			}
			if len(d.members) != len(l.Members) {
				t.Fatalf("layer %s: %d members derived, %d exported", l.Standard.Digest, len(d.members), len(l.Members))
			}
			for i, m := range d.members {
				mh := sha256.New()
				if _, err := io.Copy(mh, d.member(m)); err != nil {
					t.Fatal(err)
				}
				if got := digest.NewDigest(digest.SHA256, mh); got != l.Members[i].Digest || m.desc.Digest != got {
					t.Errorf("member %d: %s, exported %s", i, got, l.Members[i].Digest)
				}
			}
		}
	}
	if n != 2 {
		t.Fatalf("%d layers with blocks, want 2", n)
	}
}

// framedLayer is a small block-framed gzip layer: a verbatim member, the
// header member and member of one block, and the end of the archive.
func framedLayer(t testing.TB) []byte {
	var out bytes.Buffer
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	tw.WriteHeader(&tar.Header{Name: "etc/os-release", Mode: 0o644, Size: 8, Typeflag: tar.TypeReg})
	tw.Write([]byte("ID=test\n"))
	tw.Flush()
	if err := layer.GzipMember(&out, raw.Bytes(), layer.FormPieces); err != nil {
		t.Fatal(err)
	}
	data := jar("block", 5000)
	raw.Reset()
	tw = tar.NewWriter(&raw)
	tw.WriteHeader(&tar.Header{Name: "usr/bin/tool", Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg})
	tw.Flush()
	out.Write(layer.AppendHeaderMember(nil, blocks.Gzip, raw.Bytes()))
	padded := append(bytes.Clone(data), make([]byte, (512-len(data)%512)%512)...)
	if err := layer.WriteBlockMember(context.Background(), &out, bytes.NewReader(padded), int64(len(padded))); err != nil {
		t.Fatal(err)
	}
	if err := layer.GzipMember(&out, make([]byte, 1024), layer.FormPieces); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// FuzzDeriveBlocked: a standard layer from a bundle is outside input; the
// derivation of its blocked form fails cleanly on anything, and what it
// derives from a layer holds together (every member lies in the layer).
func FuzzDeriveBlocked(f *testing.F) {
	f.Add(framedLayer(f))
	f.Add([]byte{0x1f, 0x8b})
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := deriveBlocked(context.Background(), bytes.NewReader(data), os.TempDir(), "application/vnd.oci.image.layer.v1.tar+gzip", io.Discard)
		if err != nil {
			return
		}
		defer d.close()
		for _, m := range d.members {
			if m.off < 0 || m.n <= 0 || m.off+m.n > int64(len(data)) {
				t.Fatalf("member %s at %d+%d outside the %d-byte layer", m.desc.Digest, m.off, m.n, len(data))
			}
		}
	})
}
