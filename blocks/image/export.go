package image

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/layer"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// writeBufSize buffers the layer blobs Split writes.
const writeBufSize = 1 << 20

// DefaultMinBlockSize is the size from which a regular file becomes a block
// even when the frontend did not record it as imported. Smaller files stay
// in the layer's verbatim members, compressed together (each block is
// compressed alone, and small ones lose the context a whole-layer gzip has);
// an upgrade of some of them ships their members, and a bundle patches the
// unchanged members of the layer away. 64 KiB keeps a first install of the
// scenario in docs/BENCHMARKS.md within 0.7% of plain gzip; 16 KiB cost
// 1.4% there for no smaller upgrade once bundles carry patches.
const DefaultMinBlockSize = 64 << 10

// ExportOptions configure Export.
type ExportOptions struct {
	// Compression of the standard and blocked layers written. Empty means gzip.
	Compression blocks.Compression
	// MinBlockSize: regular files of at least this many bytes become blocks.
	// Zero means DefaultMinBlockSize; negative means only imported files.
	MinBlockSize int64
	// Progress, if set, receives a progress bar of the layer bytes read
	// (or, with PlainProgress, one line per layer).
	Progress      io.Writer
	PlainProgress bool
	// TempDir holds Split's spool files. Empty means the store's own temp
	// directory (store.TempDir), where the next writer removes what a
	// killed export left.
	TempDir string
	// NoReferrers skips copying the referrers (signatures, attestations,
	// SBOMs) of the source's manifests; see docs/SIGNING.md.
	NoReferrers bool
}

// ExportResult describes what Export wrote into the store.
type ExportResult struct {
	Name string `json:"name"`
	// Standard is the standard image that hydrate reproduces: a manifest, or
	// for a multi-platform source an index of the standard manifests.
	Standard ocispec.Descriptor `json:"standard"`
	// Index is the image index tagged under Name.
	Index     ocispec.Descriptor `json:"index"`
	Manifests []ManifestResult   `json:"manifests"`
	// Blocks counts block files (each occurrence), BlockBytes their raw bytes.
	Blocks     int   `json:"blocks"`
	BlockBytes int64 `json:"blockBytes"`
	// NewMembers are block members written by this export; ReusedMembers are
	// block occurrences served by a member the store already held.
	NewMembers     int   `json:"newMembers"`
	NewMemberBytes int64 `json:"newMemberBytes"`
	ReusedMembers  int   `json:"reusedMembers"`
	// Attestations are BuildKit's attestation manifests of the source index
	// (provenance, SBOMs), kept in the standard index and re-pointed to the
	// standard manifests.
	Attestations []AttestationResult `json:"attestations,omitempty"`
	// Referrers are the signatures, attestations and SBOMs copied from the
	// source and recorded for the standard image (store.AddReferrer): those
	// of every source manifest or index whose digest export kept.
	Referrers []store.Referrer `json:"referrers,omitempty"`
	// DroppedReferrers are source manifests that had referrers but whose
	// digest export changed (it re-framed their layers): a signature of the
	// source digest does not verify for the standard one, so they are not
	// kept. Sign the standard digest (docs/SIGNING.md).
	DroppedReferrers []DroppedReferrers `json:"droppedReferrers,omitempty"`
}

// DroppedReferrers says that the referrers of a source manifest were not
// kept because export gave it another digest.
type DroppedReferrers struct {
	Source   digest.Digest `json:"source"`
	Standard digest.Digest `json:"standard"`
	Count    int           `json:"count"`
}

// ManifestResult is one exported image manifest (one platform).
type ManifestResult struct {
	Platform *ocispec.Platform  `json:"platform,omitempty"`
	Source   ocispec.Descriptor `json:"source"`
	Standard ocispec.Descriptor `json:"standard"`
	Blocked  ocispec.Descriptor `json:"blocked"`
	Layers   []LayerResult      `json:"layers"`
}

// LayerResult is one exported layer.
type LayerResult struct {
	Source   ocispec.Descriptor  `json:"source"`
	Standard ocispec.Descriptor  `json:"standard"`
	Blocked  ocispec.Descriptor  `json:"blocked"`
	BlockSet *ocispec.Descriptor `json:"blockSet,omitempty"`
	// Blocks counts block files in the layer, BlockBytes their raw bytes.
	Blocks     int   `json:"blocks"`
	BlockBytes int64 `json:"blockBytes"`
}

// Export reads the image src and writes into s, under name, the standard
// image with block-framed layers and its blocked form (see
// docs/ARCHITECTURE.md "What the store holds"). The image index is tagged
// last, so an interrupted export leaves only unreferenced blobs.
func Export(ctx context.Context, s *store.Store, src transport.Source, name string, opts ExportOptions) (*ExportResult, error) {
	if err := blocks.ValidateName(name); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	c := opts.Compression
	switch c {
	case "":
		c = blocks.Gzip
	case blocks.Gzip, blocks.Zstd:
	default:
		return nil, fmt.Errorf("export: unknown compression %q (want gzip or zstd)", c)
	}
	minSize := opts.MinBlockSize
	if minSize == 0 {
		minSize = DefaultMinBlockSize
	}
	// The lease keeps gc from sweeping what this export writes, and the
	// members it reuses, until the image index is tagged.
	release, err := s.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	defer release()
	root, err := src.Resolve(ctx)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	tempDir := opts.TempDir
	if tempDir == "" {
		tempDir = s.TempDir()
	}
	e := &exporter{
		s: s, src: src, c: c, minSize: minSize, tempDir: tempDir,
		members: &countingMembers{Store: s},
		done:    map[layerKey]*LayerResult{},
		res:     &ExportResult{Name: name},
	}
	if err := e.startProgress(ctx, root, opts); err != nil {
		return nil, err
	}
	defer e.prog.finish()

	var stdEntries, extra []ocispec.Descriptor
	var standard ocispec.Descriptor
	// subjects pairs each source manifest or index with what export wrote
	// for it, for the referrers (renamed ones lose theirs).
	var subjects [][2]digest.Digest
	switch {
	case transport.IsManifest(root.MediaType):
		pm, err := e.exportManifest(ctx, root)
		if err != nil {
			return nil, err
		}
		standard = plain(pm.std)
		subjects = append(subjects, [2]digest.Digest{root.Digest, standard.Digest})
		stdEntries = []ocispec.Descriptor{pm.std}
		extra = append(extra, pm.entries...)
	case transport.IsIndex(root.MediaType):
		var idx ocispec.Index
		if err := readJSON(ctx, src, root, &idx); err != nil {
			return nil, err
		}
		renamed := map[digest.Digest]digest.Digest{}
		renamedDesc := map[digest.Digest]ocispec.Descriptor{}
		toOCI := false
		for _, entry := range idx.Manifests {
			image, err := e.isImageManifest(ctx, entry)
			if err != nil {
				return nil, err
			}
			if !image {
				if err := e.copyTree(ctx, entry); err != nil {
					return nil, err
				}
				subjects = append(subjects, [2]digest.Digest{entry.Digest, entry.Digest})
				stdEntries = append(stdEntries, entry)
				continue
			}
			pm, err := e.exportManifest(ctx, entry)
			if err != nil {
				return nil, err
			}
			std := entry
			std.MediaType, std.Digest, std.Size = pm.std.MediaType, pm.std.Digest, pm.std.Size
			if std.MediaType != entry.MediaType {
				toOCI = true
			}
			renamed[entry.Digest] = std.Digest
			renamedDesc[entry.Digest] = plain(std)
			subjects = append(subjects, [2]digest.Digest{entry.Digest, std.Digest})
			stdEntries = append(stdEntries, std)
			extra = append(extra, pm.entries...)
		}
		// BuildKit attestations name the image they describe in an index
		// annotation, in their in-toto subjects and (oci-artifact) in a
		// subject field; point all of them at the standard manifest (see
		// attest.go).
		for i, entry := range stdEntries {
			ref := entry.Annotations[annotationReferenceDigest]
			if ref == "" {
				continue
			}
			to, ok := renamedDesc[digest.Digest(ref)]
			if !ok {
				continue
			}
			a := cloneMap(entry.Annotations)
			a[annotationReferenceDigest] = to.Digest.String()
			nd, n, err := e.repointAttestation(ctx, entry, digest.Digest(ref), to)
			if err != nil {
				return nil, fmt.Errorf("export: %w", err)
			}
			stdEntries[i] = nd
			stdEntries[i].Annotations = a
			if entry.Annotations[annotationReferenceType] == attestationReferenceType {
				e.res.Attestations = append(e.res.Attestations, AttestationResult{Source: entry.Digest, Standard: plain(nd), Subject: to.Digest, Statements: n})
			}
			if nd.Digest != entry.Digest {
				for j := range subjects {
					if subjects[j][0] == entry.Digest {
						subjects[j][1] = nd.Digest
					}
				}
			}
		}
		if len(renamed) == 0 {
			return nil, fmt.Errorf("export: index %s holds no image manifest (only %d other entries)", root.Digest, len(idx.Manifests))
		}
		mt := idx.MediaType
		if mt == "" || toOCI {
			mt = ocispec.MediaTypeImageIndex
		}
		stdIdx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Manifests: stdEntries, Annotations: idx.Annotations}
		if standard, err = s.PutJSON(ctx, mt, stdIdx); err != nil {
			return nil, fmt.Errorf("export: store standard index: %w", err)
		}
		subjects = append([][2]digest.Digest{{root.Digest, standard.Digest}}, subjects...)
	default:
		return nil, fmt.Errorf("export: root %s has media type %q, want an image manifest or index", root.Digest, root.MediaType)
	}

	imageIndex := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: append(append([]ocispec.Descriptor{}, stdEntries...), dedup(extra)...),
		Annotations: map[string]string{
			blocks.AnnotationStandard:          standard.Digest.String(),
			blocks.AnnotationStandardMediaType: standard.MediaType,
			blocks.AnnotationStandardSize:      fmt.Sprint(standard.Size),
		},
	}
	idxDesc, err := s.PutJSON(ctx, ocispec.MediaTypeImageIndex, imageIndex)
	if err != nil {
		return nil, fmt.Errorf("export: store image index: %w", err)
	}
	if err := s.Tag(ctx, name, idxDesc); err != nil {
		return nil, fmt.Errorf("export: tag %s: %w", name, err)
	}
	if rs, ok := src.(transport.ReferrerSource); ok && !opts.NoReferrers {
		if err := e.copyReferrers(ctx, rs, subjects); err != nil {
			return nil, err
		}
	}
	e.res.Standard, e.res.Index = standard, idxDesc
	e.res.NewMembers, e.res.NewMemberBytes = e.members.newMembers, e.members.newBytes
	e.res.ReusedMembers = max(e.res.Blocks-e.members.newMembers, 0)
	return e.res, nil
}

// annotationReferenceDigest is BuildKit's index annotation naming the
// manifest an attestation manifest describes.
const annotationReferenceDigest = "vnd.docker.reference.digest"

type exporter struct {
	s       *store.Store
	src     transport.Source
	c       blocks.Compression
	minSize int64
	tempDir string
	members *countingMembers
	res     *ExportResult
	prog    *progress
	done    map[layerKey]*LayerResult
}

// layerKey is what the split of a source layer depends on.
type layerKey struct {
	source, diffID digest.Digest
	docker         bool
	imports        string
}

// manifestOut is the result of exporting one image manifest.
type manifestOut struct {
	std     ocispec.Descriptor   // standard manifest, with platform
	entries []ocispec.Descriptor // blocked manifest and block-set entries for the image index
}

// isImageManifest reports whether an index entry is an image to export
// (rather than an attestation or other artifact to pass through).
func (e *exporter) isImageManifest(ctx context.Context, entry ocispec.Descriptor) (bool, error) {
	if !transport.IsManifest(entry.MediaType) {
		return false, nil
	}
	if entry.Annotations["vnd.docker.reference.type"] != "" {
		return false, nil
	}
	var m ocispec.Manifest
	if err := readJSON(ctx, e.src, entry, &m); err != nil {
		return false, err
	}
	return m.Config.MediaType == ocispec.MediaTypeImageConfig || m.Config.MediaType == transport.MediaTypeDockerConfig, nil
}

func (e *exporter) exportManifest(ctx context.Context, desc ocispec.Descriptor) (*manifestOut, error) {
	var m ocispec.Manifest
	if err := readJSON(ctx, e.src, desc, &m); err != nil {
		return nil, err
	}
	if err := e.copyBlob(ctx, m.Config); err != nil {
		return nil, fmt.Errorf("export: config of manifest %s: %w", desc.Digest, err)
	}
	var cfg ocispec.Image
	if err := e.s.GetJSON(ctx, m.Config, &cfg); err != nil {
		return nil, fmt.Errorf("export: config %s: %w", m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("export: manifest %s has %d layers but its config %s lists %d diff_ids", desc.Digest, len(m.Layers), m.Config.Digest, len(cfg.RootFS.DiffIDs))
	}
	imported, err := importsFromLabel(cfg.Config.Labels[blocks.LabelImports])
	if err != nil {
		return nil, fmt.Errorf("export: config %s: label %s: %w", m.Config.Digest, blocks.LabelImports, err)
	}
	// Docker schema2 stays Docker for gzip; Docker has no zstd layer type
	// that every client knows, so zstd switches the manifest to OCI.
	docker := m.MediaType == transport.MediaTypeDockerManifest && e.c == blocks.Gzip
	stdMT := ocispec.MediaTypeImageManifest
	config := m.Config
	if docker {
		stdMT = transport.MediaTypeDockerManifest
	} else if config.MediaType == transport.MediaTypeDockerConfig {
		config.MediaType = ocispec.MediaTypeImageConfig
	}
	config = plain(config)

	mr := ManifestResult{Source: plain(desc), Platform: desc.Platform}
	if mr.Platform == nil {
		mr.Platform = &ocispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant, OSVersion: cfg.OSVersion}
	}
	var stdLayers, blockedLayers []ocispec.Descriptor
	var sets []ocispec.Descriptor
	for i, l := range m.Layers {
		// Platforms often share layers (a COPY of jars is the same tar on
		// every platform): split each distinct layer once.
		key := layerKey{l.Digest, cfg.RootFS.DiffIDs[i], docker, cfg.Config.Labels[blocks.LabelImports]}
		lr, ok := e.done[key]
		if !ok {
			lr, err = e.exportLayer(ctx, l, cfg.RootFS.DiffIDs[i], docker, imported)
			if err != nil {
				return nil, fmt.Errorf("export: manifest %s layer %d (%s): %w", desc.Digest, i, l.Digest, err)
			}
			e.done[key] = lr
		} else {
			e.prog.add(l.Size)
		}
		stdLayers = append(stdLayers, lr.Standard)
		blockedLayers = append(blockedLayers, lr.Blocked)
		if lr.BlockSet != nil {
			sets = append(sets, *lr.BlockSet)
		}
		mr.Layers = append(mr.Layers, *lr)
	}
	std := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   stdMT,
		Config:      config,
		Layers:      stdLayers,
		Annotations: m.Annotations,
	}
	stdDesc, err := e.s.PutJSON(ctx, stdMT, std)
	if err != nil {
		return nil, fmt.Errorf("export: store standard manifest: %w", err)
	}
	blocked := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: blocks.ArtifactTypeBlocked,
		Config:       config,
		Layers:       blockedLayers,
		Annotations:  map[string]string{blocks.AnnotationBlockedOf: stdDesc.Digest.String()},
	}
	blockedDesc, err := e.s.PutJSON(ctx, ocispec.MediaTypeImageManifest, blocked)
	if err != nil {
		return nil, fmt.Errorf("export: store blocked manifest: %w", err)
	}
	mr.Standard, mr.Blocked = stdDesc, blockedDesc
	e.res.Manifests = append(e.res.Manifests, mr)

	out := &manifestOut{std: stdDesc}
	out.std.Platform = mr.Platform
	out.entries = append(out.entries, ocispec.Descriptor{
		MediaType:   ocispec.MediaTypeImageManifest,
		Digest:      blockedDesc.Digest,
		Size:        blockedDesc.Size,
		Platform:    unknownPlatform(),
		Annotations: map[string]string{blocks.AnnotationBlockedOf: stdDesc.Digest.String()},
	})
	out.entries = append(out.entries, sets...)
	return out, nil
}

func unknownPlatform() *ocispec.Platform {
	return &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
}

// splittable returns the decompressor for a layer media type that Split
// can take (a tar, uncompressed, gzip or zstd); ok is false for anything
// else, which passes through unchanged.
func splittable(mt string) (open func(io.Reader) (io.ReadCloser, error), ok bool) {
	switch mt {
	case ocispec.MediaTypeImageLayer, transport.MediaTypeDockerLayerTar:
		return func(r io.Reader) (io.ReadCloser, error) { return io.NopCloser(r), nil }, true
	case ocispec.MediaTypeImageLayerGzip, transport.MediaTypeDockerLayerGzip:
		return func(r io.Reader) (io.ReadCloser, error) { return kgzip.NewReader(r) }, true
	case ocispec.MediaTypeImageLayerZstd, transport.MediaTypeDockerLayerZstd:
		return func(r io.Reader) (io.ReadCloser, error) {
			d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
			if err != nil {
				return nil, err
			}
			return d.IOReadCloser(), nil
		}, true
	}
	return nil, false
}

func (e *exporter) exportLayer(ctx context.Context, l ocispec.Descriptor, diffID digest.Digest, docker bool, imported func(string) bool) (*LayerResult, error) {
	open, ok := splittable(l.MediaType)
	if !ok {
		if err := e.copyBlob(ctx, l); err != nil {
			return nil, err
		}
		e.prog.add(l.Size)
		return &LayerResult{Source: plain(l), Standard: l, Blocked: l}, nil
	}
	rc, err := e.src.Fetch(ctx, l)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	counted := e.prog.reader(rc)
	tarStream, err := open(counted)
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	defer tarStream.Close()

	stdW, err := e.s.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	defer stdW.Close()
	blockedW, err := e.s.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	defer blockedW.Close()

	// Split writes many small members (headers, stubs); buffer them so the
	// blob files see few large writes.
	stdBuf, blockedBuf := bufio.NewWriterSize(stdW, writeBufSize), bufio.NewWriterSize(blockedW, writeBufSize)
	sr, err := layer.Split(ctx, tarStream, stdBuf, blockedBuf, layer.SplitOptions{
		Compression:  e.c,
		MinBlockSize: e.minSize,
		IsImported:   imported,
		Members:      e.members,
		TempDir:      e.tempDir,
	})
	if err != nil {
		return nil, err
	}
	if err := stdBuf.Flush(); err != nil {
		return nil, err
	}
	if err := blockedBuf.Flush(); err != nil {
		return nil, err
	}
	// Read the source to its end, so its digest and size are verified too.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return nil, err
	}
	if sr.DiffID != diffID {
		return nil, fmt.Errorf("uncompressed digest %s, but the config says %s", sr.DiffID, diffID)
	}
	mt := layer.LayerMediaType(e.c)
	if docker {
		mt = transport.MediaTypeDockerLayerGzip
	}
	std, err := stdW.Commit(ctx, mt)
	if err != nil {
		return nil, fmt.Errorf("store standard layer: %w", err)
	}
	if std.Digest != sr.Standard.Digest || std.Size != sr.Standard.Size {
		return nil, fmt.Errorf("standard layer: wrote %s (%d bytes), split reported %s (%d bytes)", std.Digest, std.Size, sr.Standard.Digest, sr.Standard.Size)
	}
	lr := &LayerResult{Source: plain(l), Standard: std, Blocked: std}
	if !sr.HasBlocks() {
		return lr, nil
	}
	blocked, err := blockedW.Commit(ctx, mt)
	if err != nil {
		return nil, fmt.Errorf("store blocked layer: %w", err)
	}
	if blocked.Digest != sr.Blocked.Digest || blocked.Size != sr.Blocked.Size {
		return nil, fmt.Errorf("blocked layer: wrote %s, split reported %s", blocked.Digest, sr.Blocked.Digest)
	}
	lr.Blocked = blocked
	var members []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	for _, b := range sr.Blocks {
		lr.Blocks++
		lr.BlockBytes += b.Raw.Size
		if seen[b.Member.Digest] {
			continue
		}
		seen[b.Member.Digest] = true
		// Only mediaType, digest and size: the stubs already say which raw
		// block each member holds, and an annotation would cost ~100 bytes
		// per block in every bundle.
		members = append(members, ocispec.Descriptor{
			MediaType: e.c.MemberMediaType(),
			Digest:    b.Member.Digest,
			Size:      b.Member.Size,
		})
	}
	e.res.Blocks += lr.Blocks
	e.res.BlockBytes += lr.BlockBytes
	set, err := e.putBlockSet(ctx, blocked, members)
	if err != nil {
		return nil, err
	}
	lr.BlockSet = &set
	return lr, nil
}

// emptyJSON is the OCI empty descriptor, without its inline data (which
// would change the manifest digest for nothing).
var emptyJSON = ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: ocispec.DescriptorEmptyJSON.Size}

// putBlockSet stores the block-set manifest of one blocked layer and returns
// its image index entry.
func (e *exporter) putBlockSet(ctx context.Context, blocked ocispec.Descriptor, members []ocispec.Descriptor) (ocispec.Descriptor, error) {
	if err := e.s.Push(ctx, emptyJSON, strings.NewReader("{}")); err != nil {
		return ocispec.Descriptor{}, err
	}
	set := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: blocks.ArtifactTypeBlockSet,
		Config:       emptyJSON,
		Layers:       members,
		Annotations:  map[string]string{blocks.AnnotationBlockSetOf: blocked.Digest.String()},
	}
	d, err := e.s.PutJSON(ctx, ocispec.MediaTypeImageManifest, set)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("store block set of %s: %w", blocked.Digest, err)
	}
	d.Platform = unknownPlatform()
	d.Annotations = map[string]string{blocks.AnnotationBlockSetOf: blocked.Digest.String()}
	return d, nil
}

// copyBlob copies one blob from the source into the store, verified.
func (e *exporter) copyBlob(ctx context.Context, d ocispec.Descriptor) error {
	if ok, err := e.s.Exists(ctx, d.Digest); err != nil || ok {
		return err
	}
	rc, err := e.src.Fetch(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	return e.s.Push(ctx, plain(d), rc)
}

// copyTree copies a manifest or index and everything it names, verbatim.
func (e *exporter) copyTree(ctx context.Context, d ocispec.Descriptor) error {
	switch {
	case transport.IsIndex(d.MediaType):
		var idx ocispec.Index
		if err := readJSON(ctx, e.src, d, &idx); err != nil {
			return err
		}
		for _, c := range idx.Manifests {
			if err := e.copyTree(ctx, c); err != nil {
				return err
			}
		}
	case transport.IsManifest(d.MediaType):
		var m ocispec.Manifest
		if err := readJSON(ctx, e.src, d, &m); err != nil {
			return err
		}
		for _, b := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			if err := e.copyBlob(ctx, b); err != nil {
				return fmt.Errorf("export: copy %s of %s: %w", b.Digest, d.Digest, err)
			}
		}
	}
	return e.copyBlob(ctx, d)
}

// readJSON reads a small document from src, verified and capped.
func readJSON(ctx context.Context, src transport.Source, d ocispec.Descriptor, v any) error {
	if d.Size > store.MaxJSONSize {
		return fmt.Errorf("%s %s: %d bytes is more than the %d allowed", d.MediaType, d.Digest, d.Size, store.MaxJSONSize)
	}
	rc, err := src.Fetch(ctx, d)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parse %s %s: %w", d.MediaType, d.Digest, err)
	}
	return nil
}

// importsFromLabel parses the dev.blockfile.imports label into a tar-name
// predicate: a path names one file; a path ending in "/" is a tree
// destination, and every file under it counts as imported.
func importsFromLabel(label string) (func(string) bool, error) {
	if label == "" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(label), &m); err != nil {
		return nil, err
	}
	files := map[string]bool{}
	var dirs []string
	for p := range m {
		name := strings.TrimLeft(p, "/")
		if strings.HasSuffix(p, "/") {
			dirs = append(dirs, name)
			continue
		}
		files[name] = true
	}
	return func(name string) bool {
		name = strings.TrimPrefix(strings.TrimLeft(name, "/"), "./")
		if files[name] {
			return true
		}
		for _, d := range dirs {
			if strings.HasPrefix(name, d) {
				return true
			}
		}
		return false
	}, nil
}

// countingMembers is the store as Split's MemberStore, counting the block
// members this export adds.
type countingMembers struct {
	*store.Store
	newMembers int
	newBytes   int64
}

func (c *countingMembers) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	had, err := c.Store.Exists(ctx, desc.Digest)
	if err != nil {
		return err
	}
	if err := c.Store.Push(ctx, desc, r); err != nil {
		return err
	}
	if !had && (desc.MediaType == blocks.MediaTypeMemberGzip || desc.MediaType == blocks.MediaTypeMemberZstd) {
		c.newMembers++
		c.newBytes += desc.Size
	}
	return nil
}

// plain strips a descriptor to media type, digest and size.
func plain(d ocispec.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// dedup drops repeated descriptors (the same block set serves every
// platform that shares a layer).
func dedup(ds []ocispec.Descriptor) []ocispec.Descriptor {
	seen := map[digest.Digest]bool{}
	var out []ocispec.Descriptor
	for _, d := range ds {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			out = append(out, d)
		}
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// maxReferrerDepth bounds referrers of referrers (a signature of an SBOM of
// an image is depth 2).
const maxReferrerDepth = 3

// copyReferrers copies into the store, and records, the referrers of each
// source manifest or index that export kept under the same digest (and
// their referrers in turn). A signature covers a digest: those of a
// manifest export re-framed are reported in DroppedReferrers instead.
func (e *exporter) copyReferrers(ctx context.Context, src transport.ReferrerSource, subjects [][2]digest.Digest) error {
	type item struct {
		subject digest.Digest
		depth   int
	}
	var queue []item
	seen := map[digest.Digest]bool{}
	for _, p := range subjects {
		if seen[p[0]] {
			continue
		}
		seen[p[0]] = true
		if p[0] == p[1] {
			queue = append(queue, item{p[0], 1})
			continue
		}
		refs, err := src.Referrers(ctx, ocispec.Descriptor{Digest: p[0]})
		if err != nil {
			return fmt.Errorf("export: %w (--no-referrers skips them)", err)
		}
		if len(refs) > 0 {
			e.res.DroppedReferrers = append(e.res.DroppedReferrers, DroppedReferrers{Source: p[0], Standard: p[1], Count: len(refs)})
		}
	}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		refs, err := src.Referrers(ctx, ocispec.Descriptor{Digest: it.subject})
		if err != nil {
			return fmt.Errorf("export: %w (--no-referrers skips them)", err)
		}
		for _, r := range refs {
			if err := e.copyTree(ctx, plain(r)); err != nil {
				return fmt.Errorf("export: referrer %s of %s: %w", r.Digest, it.subject, err)
			}
			if err := e.s.AddReferrer(ctx, it.subject, r); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			e.res.Referrers = append(e.res.Referrers, store.Referrer{Subject: it.subject, Descriptor: r})
			if !seen[r.Digest] && it.depth < maxReferrerDepth {
				seen[r.Digest] = true
				queue = append(queue, item{r.Digest, it.depth + 1})
			}
		}
	}
	return nil
}
