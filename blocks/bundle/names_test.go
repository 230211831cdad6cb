package bundle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockfile/blockfile/blocks"
)

// A bundle's image names come from whoever made the bundle. A name that is
// not an image reference ("..", a path, terminal escapes) is refused before
// anything is written: it would become a tag, and {name} in an output.
func TestApplyRefusesUnsafeNames(t *testing.T) {
	f := newFixture(t)
	for _, name := range []string{"..", "../../etc", "a/../../../b", ".", "app:v2\x1b]0;owned\x07", "\x1b[2J", "app v2"} {
		h := *f.header
		h.Images = append([]Image{}, h.Images...)
		h.Images[0].Name = name
		p := writeHeader(t, f.src, &h)

		// The directory the user named, inside a parent that must stay empty.
		parent := t.TempDir()
		outDir := filepath.Join(parent, "out")
		before := listing(t, f.site.Root())
		_, err := Apply(context.Background(), f.site, p, ApplyOptions{Outputs: []string{"oci:" + outDir + "/{name}"}})
		if !errors.Is(err, blocks.ErrInvalidName) {
			t.Errorf("name %q: apply = %v, want ErrInvalidName", name, err)
			continue
		}
		if strings.ContainsAny(err.Error(), "\x1b\x07") {
			t.Errorf("name %q: the error prints it raw: %q", name, err)
		}
		if after := listing(t, f.site.Root()); after != before {
			t.Errorf("name %q: apply changed the store", name)
		}
		if ents, _ := os.ReadDir(parent); len(ents) != 0 {
			t.Errorf("name %q: apply wrote %v beside the output directory", name, ents)
		}
		// Inspect refuses it too (it reads the same header).
		if _, err := ReadHeader(p); !errors.Is(err, blocks.ErrInvalidName) {
			t.Errorf("name %q: ReadHeader = %v, want ErrInvalidName", name, err)
		}
	}
}

// OutputFor itself never lets a name leave the directory the output
// names, whatever the caller checked before.
func TestOutputForStaysInTheOutputDirectory(t *testing.T) {
	for _, tc := range []struct{ out, name string }{
		{"oci:/out/{name}", ".."},
		{"oci:/out/{name}", "."},
		{"oci-archive:/out/{name}", "../x"},
		{"oci:/out/{name}", "a/../../b"},
		{"oci:/out/{name}", ""},
	} {
		if got, err := OutputFor(tc.out, tc.name); err == nil {
			t.Errorf("OutputFor(%q, %q) = %q, want an error", tc.out, tc.name, got)
		}
	}
	// Within the check itself: an expansion equal to the directory, or
	// above it, is refused; one below it is fine.
	for p, ok := range map[string]bool{"/out/a": true, "/out/a/b": true, "/out": false, "/": false, "/out/../etc": false, "/outside": false} {
		if err := within("/out", p); (err == nil) != ok {
			t.Errorf("within(/out, %s) = %v, want ok=%v", p, err, ok)
		}
	}
	// Output templates without {name} are passed through untouched.
	if got, err := OutputFor("oci:/out/one", ".."); err != nil || got != "oci:/out/one" {
		t.Errorf("OutputFor without {name} = %q, %v", got, err)
	}
}
