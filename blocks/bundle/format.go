package bundle

import (
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
)

// A bundle is one uncompressed tar file (blobs are already compressed)
// holding an OCI image layout. The entries come in this order, so that
// inspect and the prerequisite check read the header without scanning the
// blobs, and apply can walk the manifests before the first block arrives:
//
//	blockfile-bundle.json   the Header below
//	oci-layout              {"imageLayoutVersion":"1.0.0"}
//	index.json              one entry per image: its image index, ref.name = NAME
//	blobs/sha256/<hex>...   the shipped blobs, in Header.Blobs order:
//	                        metadata first, then layers, then block members
//
// Only the blobs that the base does not hold are in blobs/; the others are
// listed in Header.Requires. docs/BUNDLES.md is the same specification in prose.
const (
	// HeaderName is the tar entry of the Header; always the first entry.
	HeaderName = "blockfile-bundle.json"

	// HeaderMediaType is Header.MediaType.
	HeaderMediaType = "application/vnd.blockfile.bundle.v1+json"

	// Version is Header.Version of a bundle that ships every changed layer
	// in its blocked form.
	Version = 1

	// VersionDerive is Header.Version of a bundle that ships some standard
	// layers in place of their blocked form (Blob.Derive); a version 1
	// reader refuses it by its version rather than misreading it.
	VersionDerive = 2

	// blobDir is where blobs sit inside the tar (OCI image layout).
	blobDir = "blobs/sha256/"
)

// Limits that keep a hostile bundle from making apply allocate without bound.
// docs/FORMAT.md section 9 lists them all.
const (
	maxHeaderSize = 64 << 20  // the header lists every shipped blob: ~200 bytes each, so ~300,000 blobs
	maxJSONSize   = 16 << 20  // one index or manifest
	maxMetaTotal  = 256 << 20 // all manifests held in memory while verifying
)

// Header is blockfile-bundle.json: what the bundle holds and what it needs.
type Header struct {
	// MediaType is HeaderMediaType.
	MediaType string `json:"mediaType"`

	// Version is the bundle format version (Version, or VersionDerive when
	// a blob has Derive); readers refuse others.
	Version int `json:"version"`

	// Images are the images the bundle delivers, in command-line order.
	Images []Image `json:"images"`

	// Blobs are the blobs in the tar, in tar order, each exactly once.
	Blobs []Blob `json:"blobs"`

	// Requires totals the blobs the images need that the bundle does not
	// carry because the base holds them. The target store must hold each
	// one (same digest and size) before apply writes anything. They are not
	// listed one by one: the manifests name them all (the image index names
	// every manifest, the manifests name every layer, config and member),
	// and a list would cost ~100 bytes per blob, more than a small upgrade
	// itself; apply derives the exact list by walking the manifests and
	// checks it against these totals.
	Requires Totals `json:"requires"`

	// Adds totals Blobs by kind: what the bundle adds to the target store.
	Adds Totals `json:"adds"`

	// Patched counts the blobs that travel as patches and the bytes of
	// their patches (Adds counts the blobs they rebuild).
	Patched *Count `json:"patched,omitempty"`
}

// Shipped is the number of blob bytes in the tar: Adds.Bytes, with each
// patched blob counted at the size of its patch.
func (h *Header) Shipped() int64 {
	n := h.Adds.Bytes
	for _, b := range h.Blobs {
		if b.Patch != nil {
			n += b.Patch.Size - b.Size
		}
	}
	return n
}

// patched counts the patched blobs of blobs and their patch bytes.
func patched(blobs []Blob) *Count {
	var c Count
	for _, b := range blobs {
		if b.Patch != nil {
			c.Blobs++
			c.Bytes += b.Patch.Size
		}
	}
	if c.Blobs == 0 {
		return nil
	}
	return &c
}

// Image is one image in a bundle.
type Image struct {
	// Name is the tag the image gets in the target store
	// (and org.opencontainers.image.ref.name in index.json).
	Name string `json:"name"`

	// Index is the image index that blockfile export wrote: the standard
	// image and its blocked form.
	Index ocispec.Descriptor `json:"index"`

	// Standard is the standard image that apply hydrates: its digest is the
	// digest the image was built with at the source.
	Standard ocispec.Descriptor `json:"standard"`

	// Platforms of the standard manifests, as os/arch[/variant].
	Platforms []string `json:"platforms,omitempty"`

	// Referrers are the signatures, attestations and SBOMs the source store
	// recorded for the image's manifests (store.AddReferrer), and theirs in
	// turn: each subject is a manifest or index of the image or another
	// referrer. Their manifests and blobs are part of the image's closure;
	// apply records them and pushes them with docker:// outputs.
	Referrers []store.Referrer `json:"referrers,omitempty"`
}

// Kind says what role a blob plays in an image.
type Kind string

// Kinds, in the order their blobs come in a bundle.
const (
	KindIndex           Kind = "index"            // image index, standard index
	KindManifest        Kind = "manifest"         // standard or attestation manifest
	KindBlockedManifest Kind = "blocked-manifest" // artifactType ArtifactTypeBlocked
	KindBlockSet        Kind = "blockset"         // artifactType ArtifactTypeBlockSet
	KindConfig          Kind = "config"           // image config, empty config of a block-set
	KindLayer           Kind = "layer"            // a layer shipped as is: no blocks in it, or an attestation
	KindBlockedLayer    Kind = "blocked-layer"    // a layer with .import. stubs
	KindBlock           Kind = "block"            // a block member
)

// rank orders kinds in the tar: what apply needs to walk first, the bulk last.
func (k Kind) rank() int {
	switch k {
	case KindIndex:
		return 0
	case KindManifest, KindBlockedManifest, KindBlockSet:
		return 1
	case KindConfig:
		return 2
	case KindBlockedLayer:
		return 3
	case KindLayer:
		return 4
	default: // KindBlock
		return 5
	}
}

// isManifest reports whether blobs of kind k are documents a walk reads.
func (k Kind) isManifest() bool {
	return k == KindIndex || k == KindManifest || k == KindBlockedManifest || k == KindBlockSet
}

// Metadata reports whether k is a small JSON document rather than layer data.
func (k Kind) Metadata() bool { return k.isManifest() || k == KindConfig }

// Blob is one blob of an image: descriptor fields plus its kind.
type Blob struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	Kind      Kind          `json:"kind"`

	// Patch, if set, says the blob travels as a patch against a blob the
	// target holds (the tar entry holds the patch, not the blob).
	Patch *Patch `json:"patch,omitempty"`

	// Derive, on a standard layer (kind layer, gzip), says it travels in
	// place of its blocked form, which apply derives from it (derive.go).
	Derive *Derive `json:"derive,omitempty"`
}

// Descriptor returns b as an OCI descriptor.
func (b Blob) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: b.MediaType, Digest: b.Digest, Size: b.Size}
}

func (b Blob) String() string {
	return fmt.Sprintf("%s (%s, %d bytes)", b.Digest, b.Kind, b.Size)
}

// Totals counts blobs and bytes, in all and per kind.
type Totals struct {
	Blobs int            `json:"blobs"`
	Bytes int64          `json:"bytes"`
	Kinds map[Kind]Count `json:"kinds,omitempty"`
}

// Count is a number of blobs and their bytes.
type Count struct {
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

// totals sums blobs.
func totals(blobs []Blob) Totals {
	t := Totals{Kinds: map[Kind]Count{}}
	for _, b := range blobs {
		t.Blobs++
		t.Bytes += b.Size
		c := t.Kinds[b.Kind]
		c.Blobs++
		c.Bytes += b.Size
		t.Kinds[b.Kind] = c
	}
	return t
}

// blobName is the tar entry name of a blob.
func blobName(d digest.Digest) string { return blobDir + d.Encoded() }
