// Package blocks holds the Blockfile data model: content-addressed blocks, the
// `.import.` stub that stands for a block inside a blocked layer, and the media
// types and annotations that tie a standard image to its blocked form.
//
// The format is specified in prose in docs/FORMAT.md; this file is the same
// specification in Go. Keep the two in step. Nothing under blocks/ imports
// BuildKit: these packages are used by the CLI, by bundles and by the frontend
// alike.
package blocks

import (
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FormatVersion is the version of the Blockfile format described in docs/FORMAT.md.
const FormatVersion = 1

// Media types.
const (
	// MediaTypeBlock is a raw block: the exact bytes of one file, addressed by
	// the sha256 of those bytes (what sha256sum prints for the file).
	MediaTypeBlock = "application/vnd.blockfile.block.v1"

	// MediaTypeTree is a tree block: the canonical JSON document of a folder
	// (see blocks/tree). Its digest is the sha256 of that document.
	MediaTypeTree = "application/vnd.blockfile.tree.v1+json"

	// MediaTypeMemberGzip is a block's data member in a gzip block-framed
	// layer: one gzip member holding the block's bytes plus tar padding to
	// 512. It depends only on the block's bytes (no name, mtime 0).
	MediaTypeMemberGzip = "application/vnd.blockfile.member.v1.tar+gzip"

	// MediaTypeMemberZstd is the zstd counterpart of MediaTypeMemberGzip: one
	// zstd frame holding the block's bytes plus tar padding.
	MediaTypeMemberZstd = "application/vnd.blockfile.member.v1.tar+zstd"

	// ArtifactTypeBlocked is the artifactType of a blocked manifest: the same
	// image as a standard manifest, with block data replaced by stubs.
	ArtifactTypeBlocked = "application/vnd.blockfile.blocked.v1"

	// ArtifactTypeBlockSet is the artifactType of a block-set manifest: the
	// list of block members that the stubs of one blocked layer name. It
	// exists so that every registry's garbage collector keeps the members.
	ArtifactTypeBlockSet = "application/vnd.blockfile.blockset.v1"

	// ArtifactTypeDelta is the artifactType of a delta manifest in a
	// registry (docs/FORMAT.md section 8c): an OCI 1.1 referrer of an image
	// index whose one layer is an update bundle (MediaTypeBundle) from a
	// base image to that index. It is transport, not a statement about the
	// image: it is never recorded in a store as a referrer nor copied as one.
	ArtifactTypeDelta = "application/vnd.blockfile.delta.v1"

	// ArtifactTypeBlockMap is the artifactType of a block map manifest in
	// a registry (docs/FORMAT.md section 8d): a referrer of an image index
	// whose layers (MediaTypeBlockMap) name the raw block of each block
	// member of a standard layer, so that a pull can derive a blocked layer
	// without inflating its blocks.
	ArtifactTypeBlockMap = "application/vnd.blockfile.blockmap.v1"

	// MediaTypeBlockMap is the media type of one standard layer's block
	// map (a layer of a block map manifest).
	MediaTypeBlockMap = "application/vnd.blockfile.blockmap.v1+json"

	// MediaTypeBundle is the media type of a bundle file (docs/BUNDLES.md)
	// stored as a blob: the layer of a delta manifest.
	MediaTypeBundle = "application/vnd.blockfile.bundle.v1.tar"
)

// Annotations.
const (
	// AnnotationBlockedOf, on a blocked manifest (and on its entry in the
	// image index), is the digest of the standard manifest it is the blocked
	// form of.
	AnnotationBlockedOf = "dev.blockfile.blocked-of"

	// AnnotationBlockSetOf, on a block-set manifest (and on its entry in the
	// image index), is the digest of the blocked layer whose stubs it serves.
	AnnotationBlockSetOf = "dev.blockfile.blockset-of"

	// AnnotationStandard, on an image index written by blockfile, is the
	// digest of the standard image (a manifest, or for a multi-platform
	// image an index of the standard manifests) that hydrate reproduces.
	AnnotationStandard = "dev.blockfile.standard"

	// AnnotationStandardMediaType is the media type of AnnotationStandard.
	AnnotationStandardMediaType = "dev.blockfile.standard.mediatype"

	// AnnotationStandardSize is the size in bytes of AnnotationStandard.
	AnnotationStandardSize = "dev.blockfile.standard.size"

	// AnnotationBlockDigest, on a block member descriptor, is the raw
	// block digest whose bytes the member holds.
	//
	// Deprecated: export no longer writes it in block-set manifests (the
	// stubs name each member's raw block, and the annotation cost ~100 bytes
	// per block in every bundle). Readers must not require it; layer.Hydrate
	// checks it only when present.
	AnnotationBlockDigest = "dev.blockfile.block.digest"

	// AnnotationReferrerTag, on a referrer descriptor the store records
	// (store.AddReferrer, bundle headers), is the suffix of the tag under
	// which a registry without the referrers API finds it: "sig", "att" or
	// "sbom" for cosign's sha256-<subject hex>.<suffix> tags. Absent for an
	// OCI 1.1 referrer (a manifest whose subject field names the subject),
	// which registries list through the referrers API or the
	// sha256-<subject hex> fallback index. Never written into a manifest.
	AnnotationReferrerTag = "dev.blockfile.referrer.tag"

	// AnnotationDeltaBase, on a delta manifest, is the digest of the image
	// index of the base: the image a store must hold for the delta's bundle
	// to apply. AnnotationDeltaBaseStandard is the standard image that base
	// hydrates to (informative: what a user recognises as the release).
	AnnotationDeltaBase         = "dev.blockfile.delta.base"
	AnnotationDeltaBaseStandard = "dev.blockfile.delta.base.standard"

	// AnnotationBlockMap, on a block map manifest, is its version ("1"):
	// listings that give the config's media type as the artifactType still
	// tell a block map by it. AnnotationBlockMapLayer, on a layer of a
	// block map manifest, is the digest of the standard layer it maps.
	AnnotationBlockMap      = "dev.blockfile.blockmap"
	AnnotationBlockMapLayer = "dev.blockfile.blockmap.layer"

	// LabelImports is the image config label in which the frontend records
	// what IMPORT placed where: a JSON object mapping an absolute path in the
	// image to a block digest ("sha256:<hex>"). A path ending in "/" names
	// the destination folder of a tree block.
	LabelImports = "dev.blockfile.imports"
)

// StubPrefix starts the base name of a stub entry in a blocked layer:
// the block at <dir>/<name> is stood for by <dir>/.import.<name>.
const StubPrefix = ".import."

// StubMagic is the first line of every stub document. A file that starts
// with it is a stub; export refuses source layers that hold such a file, so
// stubs are never ambiguous.
const StubMagic = "blockfile-stub/v1\n"

// Stub says which block fills a path and carries what exact reassembly
// needs. It is the Go form of the document inside a `.import.` stub entry;
// the wire form (after StubMagic) is the compact canonical JSON of
// docs/FORMAT.md section 5, written and read by layer.EncodeStub and
// layer.ParseStub, not these struct tags.
type Stub struct {
	// Block is the raw block: digest and size of the file's bytes.
	Block Ref `json:"block"`

	// Member is the exact compressed member (gzip member or zstd frame) that
	// holds the block's bytes plus tar padding in the standard layer. It
	// must be listed in the block-set manifest of this blocked layer.
	Member Ref `json:"member"`

	// Header is the original tar header record(s) of the file, PAX and GNU
	// long-name records included, byte for byte. In the standard layer they
	// sit in a member of their own, encoded deterministically (gzip stored
	// blocks, zstd raw blocks; see docs/FORMAT.md), so the stub carries the
	// raw bytes and any implementation can reproduce the member exactly.
	Header []byte `json:"header"`
}

// Ref names a blob by digest and size.
type Ref struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// Descriptor returns r as an OCI descriptor of the given media type.
func (r Ref) Descriptor(mediaType string) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: r.Digest, Size: r.Size}
}

// Compression is a layer compression that blockfile can frame.
type Compression string

// Compressions.
const (
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
)

// MemberMediaType returns the block member media type for c.
func (c Compression) MemberMediaType() string {
	if c == Zstd {
		return MediaTypeMemberZstd
	}
	return MediaTypeMemberGzip
}
