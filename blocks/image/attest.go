package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
)

// BuildKit's attestation manifests (docs/SIGNING.md "What export keeps").
//
// BuildKit puts one attestation manifest per image manifest into the index
// it exports (platform unknown/unknown, index annotations
// vnd.docker.reference.type=attestation-manifest and
// vnd.docker.reference.digest=<image manifest>). Its layers are in-toto
// statements (provenance, SBOMs) whose subject is the image manifest's
// digest; its config lists the layers as diff_ids; with the exporter's
// oci-artifact=true it has an OCI subject field too. Export re-frames the
// image manifest, so all of these name a digest that does not ship. Export
// rewrites them to name the standard manifest: the statements describe the
// same config and the same uncompressed layers, only the compression framing
// changed. Nothing else in a statement changes, and each rewritten layer
// carries AnnotationSourceSubject with the digest the statement named before.

// Annotations and media types of BuildKit attestations.
const (
	annotationReferenceType  = "vnd.docker.reference.type"
	attestationReferenceType = "attestation-manifest"
	mediaTypeInToto          = "application/vnd.in-toto+json"
	annotationUncompressed   = "containerd.io/uncompressed"

	// AnnotationSourceSubject, on an in-toto layer of an attestation
	// manifest that export re-pointed, is the image manifest digest the
	// statement named before (what BuildKit built).
	AnnotationSourceSubject = "dev.blockfile.source-subject"
)

// maxStatementSize caps an in-toto statement read into memory.
const maxStatementSize = store.MaxJSONSize

// AttestationResult is one BuildKit attestation manifest that export kept.
type AttestationResult struct {
	// Source is the attestation manifest as BuildKit wrote it.
	Source digest.Digest `json:"source"`
	// Standard is the attestation manifest in the standard image: Source
	// re-pointed to the standard manifest, or Source itself if nothing in it
	// named a re-framed manifest.
	Standard ocispec.Descriptor `json:"standard"`
	// Subject is the standard manifest it describes.
	Subject digest.Digest `json:"subject"`
	// Statements counts the in-toto statements whose subject was re-pointed.
	Statements int `json:"statements"`
}

// repointAttestation rewrites the attestation manifest entry (already copied
// into the store) so that everything naming the source manifest from names
// the standard manifest to instead. It returns the new manifest's
// descriptor and how many statements it re-pointed (0: entry is unchanged).
func (e *exporter) repointAttestation(ctx context.Context, entry ocispec.Descriptor, from digest.Digest, to ocispec.Descriptor) (ocispec.Descriptor, int, error) {
	if !transport.IsManifest(entry.MediaType) {
		return entry, 0, nil
	}
	var m ocispec.Manifest
	if err := e.s.GetJSON(ctx, entry, &m); err != nil {
		return entry, 0, fmt.Errorf("attestation manifest %s: %w", entry.Digest, err)
	}
	var raw map[string]json.RawMessage
	if err := e.s.GetJSON(ctx, entry, &raw); err != nil {
		return entry, 0, fmt.Errorf("attestation manifest %s: %w", entry.Digest, err)
	}
	changed := 0
	newLayer := map[digest.Digest]digest.Digest{}
	for i, l := range m.Layers {
		if l.MediaType != mediaTypeInToto {
			continue
		}
		nl, ok, err := e.repointStatement(ctx, l, from, to.Digest)
		if err != nil {
			return entry, 0, fmt.Errorf("attestation manifest %s layer %d: %w", entry.Digest, i, err)
		}
		if !ok {
			continue
		}
		newLayer[l.Digest] = nl.Digest
		m.Layers[i] = nl
		changed++
	}
	subjectChanged := m.Subject != nil && m.Subject.Digest == from
	if changed == 0 && !subjectChanged {
		return entry, 0, nil
	}
	if changed > 0 {
		cfg, err := e.repointConfig(ctx, m.Config, newLayer)
		if err != nil {
			return entry, 0, fmt.Errorf("attestation manifest %s: %w", entry.Digest, err)
		}
		m.Config = cfg
	}
	if subjectChanged {
		m.Subject = &ocispec.Descriptor{MediaType: to.MediaType, Digest: to.Digest, Size: to.Size}
	}
	// Keep every field of the manifest; replace only those rewritten.
	for k, v := range map[string]any{"config": m.Config, "layers": m.Layers, "subject": m.Subject} {
		if k == "subject" && m.Subject == nil {
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return entry, 0, err
		}
		raw[k] = b
	}
	d, err := e.s.PutJSON(ctx, entry.MediaType, raw)
	if err != nil {
		return entry, 0, fmt.Errorf("store re-pointed attestation manifest of %s: %w", entry.Digest, err)
	}
	out := entry
	out.Digest, out.Size = d.Digest, d.Size
	return out, changed, nil
}

// repointStatement rewrites one in-toto statement: each subject whose
// sha256 is from's becomes to's. ok is false if no subject named from.
func (e *exporter) repointStatement(ctx context.Context, l ocispec.Descriptor, from, to digest.Digest) (ocispec.Descriptor, bool, error) {
	if l.Size > maxStatementSize {
		return l, false, fmt.Errorf("in-toto statement %s: %d bytes is more than the %d allowed", l.Digest, l.Size, maxStatementSize)
	}
	rc, err := e.s.Fetch(ctx, l)
	if err != nil {
		return l, false, err
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return l, false, fmt.Errorf("in-toto statement %s: %w", l.Digest, err)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(data, &st); err != nil {
		return l, false, fmt.Errorf("in-toto statement %s: %w", l.Digest, err)
	}
	var subjects []map[string]json.RawMessage
	if s, ok := st["subject"]; ok {
		if err := json.Unmarshal(s, &subjects); err != nil {
			return l, false, fmt.Errorf("in-toto statement %s: subject: %w", l.Digest, err)
		}
	}
	hit := false
	for _, sub := range subjects {
		var dm map[string]string
		if err := json.Unmarshal(sub["digest"], &dm); err != nil {
			continue
		}
		if dm[from.Algorithm().String()] == from.Encoded() {
			dm[from.Algorithm().String()] = to.Encoded()
			b, err := json.Marshal(dm)
			if err != nil {
				return l, false, err
			}
			sub["digest"] = b
			hit = true
		}
	}
	if !hit {
		return l, false, nil
	}
	b, err := json.Marshal(subjects)
	if err != nil {
		return l, false, err
	}
	st["subject"] = b
	out, err := json.Marshal(st)
	if err != nil {
		return l, false, err
	}
	d, err := e.s.PutJSON(ctx, l.MediaType, json.RawMessage(out))
	if err != nil {
		return l, false, fmt.Errorf("store re-pointed statement of %s: %w", l.Digest, err)
	}
	nl := l
	nl.Digest, nl.Size = d.Digest, d.Size
	nl.Annotations = maps.Clone(l.Annotations)
	if nl.Annotations == nil {
		nl.Annotations = map[string]string{}
	}
	if _, ok := nl.Annotations[annotationUncompressed]; ok {
		nl.Annotations[annotationUncompressed] = d.Digest.String()
	}
	nl.Annotations[AnnotationSourceSubject] = from.String()
	return nl, true, nil
}

// repointConfig replaces rewritten layers in an attestation config's
// rootfs.diff_ids (BuildKit lists the statements there). A config that is
// not an image config (the OCI empty config) is returned as it is.
func (e *exporter) repointConfig(ctx context.Context, cfg ocispec.Descriptor, newLayer map[digest.Digest]digest.Digest) (ocispec.Descriptor, error) {
	if cfg.MediaType != ocispec.MediaTypeImageConfig && cfg.MediaType != transport.MediaTypeDockerConfig {
		return cfg, nil
	}
	var raw map[string]json.RawMessage
	if err := e.s.GetJSON(ctx, cfg, &raw); err != nil {
		return cfg, fmt.Errorf("config %s: %w", cfg.Digest, err)
	}
	var rootfs map[string]json.RawMessage
	if err := json.Unmarshal(raw["rootfs"], &rootfs); err != nil || rootfs == nil {
		return cfg, nil
	}
	var ids []digest.Digest
	if err := json.Unmarshal(rootfs["diff_ids"], &ids); err != nil {
		return cfg, nil
	}
	hit := false
	for i, id := range ids {
		if nd, ok := newLayer[id]; ok {
			ids[i], hit = nd, true
		}
	}
	if !hit {
		return cfg, nil
	}
	var err error
	if rootfs["diff_ids"], err = json.Marshal(ids); err != nil {
		return cfg, err
	}
	if raw["rootfs"], err = json.Marshal(rootfs); err != nil {
		return cfg, err
	}
	d, err := e.s.PutJSON(ctx, cfg.MediaType, raw)
	if err != nil {
		return cfg, fmt.Errorf("store re-pointed config of %s: %w", cfg.Digest, err)
	}
	return ocispec.Descriptor{MediaType: cfg.MediaType, Digest: d.Digest, Size: d.Size}, nil
}
