package bundle

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/image"
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
