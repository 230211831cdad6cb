package blocks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNotBlockfileIndex: an image index is not one that blockfile export
// wrote, or breaks the rules of docs/FORMAT.md section 8.
var ErrNotBlockfileIndex = errors.New("not a blockfile image index")

// MaxIndexSize caps the image index ParseImageIndex reads (registries cap
// manifests at 4 MiB; the store's GetJSON at 16 MiB).
const MaxIndexSize = 16 << 20

// EntryKind is the role of an entry of a blockfile image index.
type EntryKind int

// Entry kinds, in the order export writes them.
const (
	// EntryStandard: a standard manifest (with its platform) or another
	// source entry (an attestation), as the source had it.
	EntryStandard EntryKind = iota
	// EntryBlocked: a blocked manifest, annotated AnnotationBlockedOf.
	EntryBlocked
	// EntryBlockSet: a block-set manifest, annotated AnnotationBlockSetOf.
	EntryBlockSet
)

func (k EntryKind) String() string {
	switch k {
	case EntryBlocked:
		return "blocked manifest"
	case EntryBlockSet:
		return "block set"
	}
	return "standard entry"
}

// KindOf classifies an index entry by its annotations (the index entry, not
// the manifest, is what names the pairing). An entry carrying both
// annotations is refused by ParseImageIndex; KindOf calls it blocked.
func KindOf(e ocispec.Descriptor) EntryKind {
	switch {
	case e.Annotations[AnnotationBlockedOf] != "":
		return EntryBlocked
	case e.Annotations[AnnotationBlockSetOf] != "":
		return EntryBlockSet
	}
	return EntryStandard
}

// ImageIndex is the image index that export writes for an image (docs/FORMAT.md
// section 8), parsed and checked once: the standard image it names, its
// standard entries, and the pairing of each standard manifest with its
// blocked manifest and of each blocked layer with its block set. Store,
// image, bundle and registry code read the format through it.
type ImageIndex struct {
	// Index is the decoded document.
	Index ocispec.Index
	// Standard is the dev.blockfile.standard descriptor: what hydrate
	// reproduces (a manifest, or an index of the standard manifests).
	Standard ocispec.Descriptor

	standard  []ocispec.Descriptor
	blocked   []ocispec.Descriptor
	blockSets []ocispec.Descriptor
	blockedOf map[digest.Digest]ocispec.Descriptor // standard manifest -> blocked entry
	setOf     map[digest.Digest]ocispec.Descriptor // blocked layer -> block-set entry
}

// ParseImageIndex decodes and checks an image index written by export.
// data is the index blob as stored (its digest is used to refuse an index
// whose standard annotation names itself); it must already be verified
// against its descriptor.
func ParseImageIndex(data []byte) (*ImageIndex, error) {
	if len(data) > MaxIndexSize {
		return nil, fmt.Errorf("image index of %d bytes: more than %d: %w", len(data), MaxIndexSize, ErrNotBlockfileIndex)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("image index: %w: %v", ErrNotBlockfileIndex, err)
	}
	x, err := NewImageIndex(idx)
	if err != nil {
		return nil, err
	}
	if x.Standard.Digest == digest.FromBytes(data) {
		return nil, fmt.Errorf("annotation %s names the image index itself: %w", AnnotationStandard, ErrNotBlockfileIndex)
	}
	return x, nil
}

// NewImageIndex checks an already decoded image index (see ParseImageIndex).
func NewImageIndex(idx ocispec.Index) (*ImageIndex, error) {
	if idx.MediaType != "" && idx.MediaType != ocispec.MediaTypeImageIndex {
		return nil, fmt.Errorf("image index: media type %q, want %s: %w", idx.MediaType, ocispec.MediaTypeImageIndex, ErrNotBlockfileIndex)
	}
	std, ok, err := StandardOf(idx.Annotations)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("image index has no %s annotation (was it written by blockfile export?): %w", AnnotationStandard, ErrNotBlockfileIndex)
	}
	x := &ImageIndex{Index: idx, Standard: std,
		blockedOf: map[digest.Digest]ocispec.Descriptor{}, setOf: map[digest.Digest]ocispec.Descriptor{}}
	listed := map[digest.Digest]ocispec.Descriptor{} // standard entries
	for i, e := range idx.Manifests {
		if err := e.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("image index entry %d: digest %q: %w", i, e.Digest, ErrNotBlockfileIndex)
		}
		if e.Size < 0 {
			return nil, fmt.Errorf("image index entry %d (%s): size %d: %w", i, e.Digest, e.Size, ErrNotBlockfileIndex)
		}
		bo, so := e.Annotations[AnnotationBlockedOf], e.Annotations[AnnotationBlockSetOf]
		if bo != "" && so != "" {
			return nil, fmt.Errorf("image index entry %s carries both %s and %s: %w", e.Digest, AnnotationBlockedOf, AnnotationBlockSetOf, ErrNotBlockfileIndex)
		}
		switch KindOf(e) {
		case EntryBlocked:
			of, err := digest.Parse(bo)
			if err != nil {
				return nil, fmt.Errorf("blocked manifest %s: annotation %s=%q: %w", e.Digest, AnnotationBlockedOf, bo, ErrNotBlockfileIndex)
			}
			if e.MediaType != ocispec.MediaTypeImageManifest {
				return nil, fmt.Errorf("blocked manifest %s: media type %q: %w", e.Digest, e.MediaType, ErrNotBlockfileIndex)
			}
			if prev, dup := x.blockedOf[of]; dup && prev.Digest != e.Digest {
				return nil, fmt.Errorf("standard manifest %s has two blocked manifests (%s, %s): %w", of, prev.Digest, e.Digest, ErrNotBlockfileIndex)
			}
			x.blockedOf[of] = e
			x.blocked = append(x.blocked, e)
		case EntryBlockSet:
			of, err := digest.Parse(so)
			if err != nil {
				return nil, fmt.Errorf("block set %s: annotation %s=%q: %w", e.Digest, AnnotationBlockSetOf, so, ErrNotBlockfileIndex)
			}
			if e.MediaType != ocispec.MediaTypeImageManifest {
				return nil, fmt.Errorf("block set %s: media type %q: %w", e.Digest, e.MediaType, ErrNotBlockfileIndex)
			}
			if prev, dup := x.setOf[of]; dup && prev.Digest != e.Digest {
				return nil, fmt.Errorf("blocked layer %s has two block sets (%s, %s): %w", of, prev.Digest, e.Digest, ErrNotBlockfileIndex)
			}
			x.setOf[of] = e
			x.blockSets = append(x.blockSets, e)
		default:
			x.standard = append(x.standard, e)
			listed[e.Digest] = e
		}
	}
	for of, b := range x.blockedOf {
		if _, ok := listed[of]; !ok {
			return nil, fmt.Errorf("blocked manifest %s is the blocked form of %s, which the index does not list: %w", b.Digest, of, ErrNotBlockfileIndex)
		}
	}
	if isManifestType(std.MediaType) {
		if _, ok := listed[std.Digest]; !ok {
			return nil, fmt.Errorf("standard manifest %s is not listed in the image index: %w", std.Digest, ErrNotBlockfileIndex)
		}
	}
	return x, nil
}

// The standard image keeps the source's media types: OCI or Docker schema2.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

func isManifestType(mt string) bool {
	return mt == ocispec.MediaTypeImageManifest || mt == mediaTypeDockerManifest
}

func isIndexType(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == mediaTypeDockerManifestList
}

// StandardIsIndex reports whether the standard image is an index (a
// multi-platform source) rather than one manifest.
func (x *ImageIndex) StandardIsIndex() bool { return isIndexType(x.Standard.MediaType) }

// StandardEntries are the standard manifests (with their platforms) and the
// other source entries, in index order.
func (x *ImageIndex) StandardEntries() []ocispec.Descriptor { return x.standard }

// BlockedManifests are the blocked manifest entries, in index order.
func (x *ImageIndex) BlockedManifests() []ocispec.Descriptor { return x.blocked }

// BlockSets are the block-set manifest entries, in index order.
func (x *ImageIndex) BlockSets() []ocispec.Descriptor { return x.blockSets }

// BlockedOf returns the entry of the blocked manifest of the standard
// manifest std; ok is false for a standard entry without one (an
// attestation).
func (x *ImageIndex) BlockedOf(std digest.Digest) (ocispec.Descriptor, bool) {
	d, ok := x.blockedOf[std]
	return d, ok
}

// StandardOfBlocked returns the standard manifest digest that a blocked
// manifest entry is the blocked form of.
func StandardOfBlocked(e ocispec.Descriptor) (digest.Digest, error) {
	d, err := digest.Parse(e.Annotations[AnnotationBlockedOf])
	if err != nil {
		return "", fmt.Errorf("blocked manifest %s: annotation %s: %w", e.Digest, AnnotationBlockedOf, ErrNotBlockfileIndex)
	}
	return d, nil
}

// BlockSetOf returns the entry of the block-set manifest serving the
// blocked layer's stubs; ok is false if the index has none.
func (x *ImageIndex) BlockSetOf(blockedLayer digest.Digest) (ocispec.Descriptor, bool) {
	d, ok := x.setOf[blockedLayer]
	return d, ok
}

// StandardOf returns the standard-image descriptor that the
// dev.blockfile.standard annotations name; ok is false if there is none.
func StandardOf(annotations map[string]string) (desc ocispec.Descriptor, ok bool, err error) {
	d, ok := annotations[AnnotationStandard]
	if !ok {
		return ocispec.Descriptor{}, false, nil
	}
	desc.Digest, err = digest.Parse(d)
	if err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("annotation %s=%q: %w", AnnotationStandard, d, ErrNotBlockfileIndex)
	}
	s := annotations[AnnotationStandardSize]
	desc.Size, err = strconv.ParseInt(s, 10, 64)
	if err != nil || desc.Size <= 0 {
		return ocispec.Descriptor{}, false, fmt.Errorf("annotation %s=%q: not a size: %w", AnnotationStandardSize, s, ErrNotBlockfileIndex)
	}
	desc.MediaType = annotations[AnnotationStandardMediaType]
	if !isManifestType(desc.MediaType) && !isIndexType(desc.MediaType) {
		return ocispec.Descriptor{}, false, fmt.Errorf("annotation %s=%q: neither a manifest nor an index: %w", AnnotationStandardMediaType, desc.MediaType, ErrNotBlockfileIndex)
	}
	return desc, true, nil
}

// CheckBlocked checks that blocked (the manifest of a blocked entry) is the
// blocked form of the standard manifest std of digest stdDigest: artifact
// type, annotation, the same config, one layer per standard layer.
func CheckBlocked(std ocispec.Manifest, stdDigest digest.Digest, blocked ocispec.Manifest, blockedDigest digest.Digest) error {
	if blocked.ArtifactType != ArtifactTypeBlocked || blocked.Annotations[AnnotationBlockedOf] != stdDigest.String() {
		return fmt.Errorf("blocked manifest %s is not the blocked form of %s: %w", blockedDigest, stdDigest, ErrNotBlockfileIndex)
	}
	if blocked.Config.Digest != std.Config.Digest || len(blocked.Layers) != len(std.Layers) {
		return fmt.Errorf("blocked manifest %s does not match standard manifest %s (config or layer count): %w", blockedDigest, stdDigest, ErrNotBlockfileIndex)
	}
	return nil
}

// CheckBlockSet checks that set (the manifest of a block-set entry) is the
// block set of the blocked layer of digest layer.
func CheckBlockSet(set ocispec.Manifest, setDigest, layer digest.Digest) error {
	if set.ArtifactType != ArtifactTypeBlockSet || set.Annotations[AnnotationBlockSetOf] != layer.String() {
		return fmt.Errorf("manifest %s is not the block set of layer %s: %w", setDigest, layer, ErrNotBlockfileIndex)
	}
	for _, m := range set.Layers {
		if m.MediaType != MediaTypeMemberGzip && m.MediaType != MediaTypeMemberZstd {
			return fmt.Errorf("block set %s lists %s of media type %q: %w", setDigest, m.Digest, m.MediaType, ErrNotBlockfileIndex)
		}
		if err := m.Digest.Validate(); err != nil || m.Size < 0 {
			return fmt.Errorf("block set %s lists a bad member descriptor %q: %w", setDigest, m.Digest, ErrNotBlockfileIndex)
		}
	}
	return nil
}
