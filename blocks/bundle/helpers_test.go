package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/store"
)

// synthLayer describes one layer of a synthetic image in the blockfile
// form: its standard bytes and, if it has blocks, the member contents (the
// blocked layer then differs from the standard one).
type synthLayer struct {
	std     string
	members []string
}

// putSynth writes to s, in exactly the shape blockfile export writes (see
// docs/ARCHITECTURE.md), an image index for layers and tags it name. The
// blobs are not real tar+gzip, which the bundle code never looks inside:
// the planner and the bundle reader only follow descriptors.
func putSynth(t testing.TB, s *store.Store, name string, layers []synthLayer) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	push := func(mt string, content []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(content), Size: int64(len(content))}
		if err := s.Push(ctx, d, bytes.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	putJSON := func(mt string, v any) ocispec.Descriptor {
		d, err := s.PutJSON(ctx, mt, v)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	cfg := push(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","config":{"Labels":{"name":"`+name+`"}}}`))
	var stdLayers, blockedLayers []ocispec.Descriptor
	type set struct {
		of      digest.Digest
		members []ocispec.Descriptor
	}
	var sets []set
	for _, l := range layers {
		std := push(ocispec.MediaTypeImageLayerGzip, []byte(l.std))
		stdLayers = append(stdLayers, std)
		if len(l.members) == 0 {
			blockedLayers = append(blockedLayers, std)
			continue
		}
		blocked := push(ocispec.MediaTypeImageLayerGzip, []byte("blocked:"+l.std))
		blockedLayers = append(blockedLayers, blocked)
		var ms []ocispec.Descriptor
		for _, m := range l.members {
			md := push(blocks.Gzip.MemberMediaType(), []byte(m))
			ms = append(ms, md)
		}
		sets = append(sets, set{of: blocked.Digest, members: ms})
	}
	manifest := func(artifactType string, config ocispec.Descriptor, ls []ocispec.Descriptor) ocispec.Descriptor {
		m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: artifactType, Config: config, Layers: ls}
		m.SchemaVersion = 2
		return putJSON(ocispec.MediaTypeImageManifest, m)
	}
	std := manifest("", cfg, stdLayers)
	stdEntry := std
	stdEntry.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	unknown := &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
	blocked := manifest(blocks.ArtifactTypeBlocked, cfg, blockedLayers)
	blocked.Platform = unknown
	blocked.Annotations = map[string]string{blocks.AnnotationBlockedOf: std.Digest.String()}
	entries := []ocispec.Descriptor{stdEntry, blocked}
	empty := push(ocispec.DescriptorEmptyJSON.MediaType, ocispec.DescriptorEmptyJSON.Data)
	for _, st := range sets {
		bs := manifest(blocks.ArtifactTypeBlockSet, empty, st.members)
		bs.Platform = unknown
		bs.Annotations = map[string]string{blocks.AnnotationBlockSetOf: st.of.String()}
		entries = append(entries, bs)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: entries, Annotations: map[string]string{
		blocks.AnnotationStandard:          std.Digest.String(),
		blocks.AnnotationStandardMediaType: std.MediaType,
		blocks.AnnotationStandardSize:      strconv.FormatInt(std.Size, 10),
	}}
	idx.SchemaVersion = 2
	root := putJSON(ocispec.MediaTypeImageIndex, idx)
	if err := s.Tag(ctx, name, root); err != nil {
		t.Fatal(err)
	}
	return root
}

// Synthetic v1 and v2 of a service: v2 changes one jar (block) and the app
// layer; the system layer has no blocks.
var (
	synthV1 = []synthLayer{
		{std: "system layer v1"},
		{std: "deps layer v1", members: []string{"guava.jar", "netty.jar", "jackson.jar"}},
		{std: "app layer v1", members: []string{"app.jar v1"}},
	}
	synthV2 = []synthLayer{
		{std: "system layer v1"},
		{std: "deps layer v2", members: []string{"guava.jar", "netty.jar v2", "jackson.jar"}},
		{std: "app layer v2", members: []string{"app.jar v2"}},
	}
	// Another team's service: some of the same jars, at other paths (so
	// other standard and blocked layers), and one other version.
	synthOther = []synthLayer{
		{std: "system layer v1"},
		{std: "other deps", members: []string{"guava.jar", "jackson.jar", "netty.jar v3"}},
	}
)

func openStore(t testing.TB) *store.Store {
	t.Helper()
	s, err := store.Create(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// copyClosure copies what a target holds after applying name: the closure
// and the standard layers hydrate writes.
func copyClosure(t testing.TB, from, to *store.Store, name string) {
	t.Helper()
	ctx := context.Background()
	cs, err := Closures(ctx, from, []string{name})
	if err != nil {
		t.Fatal(err)
	}
	var descs []ocispec.Descriptor
	for _, b := range cs[0].Blobs {
		descs = append(descs, b.Descriptor())
	}
	descs = append(descs, cs[0].Hydrated...)
	for _, d := range descs {
		rc, err := from.Fetch(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		err = to.Push(ctx, d, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := to.Tag(ctx, name, cs[0].Index); err != nil {
		t.Fatal(err)
	}
}

// listing is every file under dir with its size and sha256: what "the store
// is unchanged" compares.
func listing(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			lines = append(lines, rel+"/")
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s %d %x", rel, n, h.Sum(nil)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func digestsOf(bs []Blob) []string {
	var out []string
	for _, b := range bs {
		out = append(out, string(b.Digest))
	}
	sort.Strings(out)
	return out
}
