package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

// Referrers are manifests that say something about another manifest, their
// subject: cosign signatures and attestations, SBOMs, provenance. The store
// keeps them beside the image rather than inside its image index, so that a
// signature made after export (on the standard manifest, the digest that
// ships) can be added without rewriting the index, and so that one record
// serves every tag whose image holds the subject. Each is a record
//
//	blockfile/referrers/<subject hex>/<referrer hex>
//
// holding the referrer's descriptor (media type, digest, size, artifactType,
// annotations; blocks.AnnotationReferrerTag says under which cosign tag a
// registry without the referrers API finds it). gc keeps a referrer, and
// everything it names, while its subject is kept, and drops the record with
// the subject; a referrer may itself have referrers (a signature of an
// attestation).

// maxReferrers caps the referrers recorded for one subject: a hostile source
// could otherwise make export or a bundle record without bound.
const maxReferrers = 1024

// referrerTagSuffix is what blocks.AnnotationReferrerTag may hold: a short
// lower-case word, so the tag sha256-<hex>.<suffix> is a valid tag.
var referrerTagSuffix = regexp.MustCompile(`^[a-z0-9]{1,32}$`)

// CheckReferrer validates a referrer descriptor: an OCI or Docker manifest or
// index with a sha256 digest, and a well-formed tag suffix if it has one.
func CheckReferrer(ref ocispec.Descriptor) error {
	if err := checkSHA256(ref.Digest); err != nil {
		return fmt.Errorf("referrer: %w", err)
	}
	switch ref.MediaType {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList:
	default:
		return fmt.Errorf("referrer %s: media type %q is not a manifest or index: %w", ref.Digest, ref.MediaType, ErrInvalid)
	}
	if ref.Size <= 0 || ref.Size > MaxJSONSize {
		return fmt.Errorf("referrer %s: size %d: %w", ref.Digest, ref.Size, ErrInvalid)
	}
	if t, ok := ref.Annotations[blocks.AnnotationReferrerTag]; ok && !referrerTagSuffix.MatchString(t) {
		return fmt.Errorf("referrer %s: annotation %s=%q: %w", ref.Digest, blocks.AnnotationReferrerTag, t, ErrInvalid)
	}
	return nil
}

// ReferrerTag returns the tag under which a registry without the referrers
// API finds ref as a referrer of subject: sha256-<hex>.<suffix> for a cosign
// tag-scheme referrer, or sha256-<hex> (the OCI fallback index) otherwise.
func ReferrerTag(subject digest.Digest, ref ocispec.Descriptor) string {
	t := subject.Algorithm().String() + "-" + subject.Encoded()
	if s := ref.Annotations[blocks.AnnotationReferrerTag]; s != "" {
		t += "." + s
	}
	return t
}

// AddReferrer records ref as a referrer of subject. Both must be in the
// store, and so must everything ref names (it is read and walked): a record
// never promises content the store lacks. Recording again replaces the
// record (annotations may change); it is written under the index lock, so gc
// cannot sweep ref between the check and the record.
func (s *Store) AddReferrer(ctx context.Context, subject digest.Digest, ref ocispec.Descriptor) error {
	if err := checkSHA256(subject); err != nil {
		return fmt.Errorf("referrer subject: %w", err)
	}
	if err := CheckReferrer(ref); err != nil {
		return err
	}
	if subject == ref.Digest {
		return fmt.Errorf("referrer %s names itself as subject: %w", ref.Digest, ErrInvalid)
	}
	rec := ocispec.Descriptor{MediaType: ref.MediaType, Digest: ref.Digest, Size: ref.Size, ArtifactType: ref.ArtifactType, Annotations: ref.Annotations}
	unlock, err := s.lockIndex(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if ok, err := s.Exists(ctx, subject); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("referrer %s: subject %s (%s): %w", ref.Digest, subject, s.BlobPath(subject), ErrNotFound)
	}
	// Everything the referrer names must be here, except its subject
	// (already checked), which the walk does not enter: a standard image
	// may hold only its blocked form (hydratable layers).
	err = s.walkGraph(ctx, []ocispec.Descriptor{rec}, func(d ocispec.Descriptor, _ *ocispec.Descriptor) (bool, error) {
		if d.Digest == subject || (d.Data != nil && digest.FromBytes(d.Data) == d.Digest) {
			return false, nil
		}
		ok, err := s.Exists(ctx, d.Digest)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("referrer %s of %s: blob %s (%s): %w", ref.Digest, subject, d.Digest, s.BlobPath(d.Digest), ErrNotFound)
		}
		return true, nil
	}, nil)
	if err != nil {
		return err
	}
	existing, err := s.Referrers(ctx, subject)
	if err != nil {
		return err
	}
	if len(existing) >= maxReferrers {
		replacing := false
		for _, e := range existing {
			replacing = replacing || e.Digest == ref.Digest
		}
		if !replacing {
			return fmt.Errorf("referrer %s: subject %s already has %d referrers: %w", ref.Digest, subject, len(existing), ErrTooLarge)
		}
	}
	return s.writeRecord(referrerRecord(subject, ref.Digest), rec, true)
}

func referrerRecord(subject, ref digest.Digest) string {
	return path.Join(referrersDir, subject.Encoded(), ref.Encoded())
}

// Referrers returns the referrers recorded for subject, sorted by digest
// (nil if none). A damaged record is an error naming its file.
func (s *Store) Referrers(ctx context.Context, subject digest.Digest) ([]ocispec.Descriptor, error) {
	if err := checkSHA256(subject); err != nil {
		return nil, fmt.Errorf("referrer subject: %w", err)
	}
	dir := path.Join(referrersDir, subject.Encoded())
	ents, err := os.ReadDir(s.path(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list referrers of %s: %w", subject, err)
	}
	var out []ocispec.Descriptor
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if checkSHA256(d) != nil {
			continue // a temp file or something foreign
		}
		desc, err := s.readReferrer(path.Join(dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if desc.Digest != d {
			return nil, fmt.Errorf("referrer record %s names %s: %w", s.path(path.Join(dir, e.Name())), desc.Digest, ErrInvalid)
		}
		out = append(out, desc)
		if len(out) > maxReferrers {
			return nil, fmt.Errorf("referrers of %s: more than %d records: %w", subject, maxReferrers, ErrTooLarge)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

// RemoveReferrer forgets that ref refers to subject (the blobs stay until gc).
func (s *Store) RemoveReferrer(ctx context.Context, subject, ref digest.Digest) error {
	if err := checkSHA256(subject); err != nil {
		return err
	}
	if err := checkSHA256(ref); err != nil {
		return err
	}
	p := s.path(referrerRecord(subject, ref))
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove referrer %s of %s: %w", ref, subject, err)
	}
	os.Remove(s.path(path.Join(referrersDir, subject.Encoded()))) // only if now empty
	return nil
}

// ReferrersClosure returns the referrers of subjects and, transitively, of
// those referrers, each once, in a deterministic order: for each subject in
// the order given, its referrers sorted by digest, then theirs.
func (s *Store) ReferrersClosure(ctx context.Context, subjects ...digest.Digest) ([]Referrer, error) {
	var out []Referrer
	seen := map[digest.Digest]bool{}
	queue := append([]digest.Digest{}, subjects...)
	for len(queue) > 0 {
		subj := queue[0]
		queue = queue[1:]
		refs, err := s.Referrers(ctx, subj)
		if err != nil {
			return nil, err
		}
		for _, r := range refs {
			if seen[r.Digest] {
				continue
			}
			seen[r.Digest] = true
			out = append(out, Referrer{Subject: subj, Descriptor: r})
			queue = append(queue, r.Digest)
		}
	}
	return out, nil
}

// Referrer is one recorded referrer and the subject it refers to.
type Referrer struct {
	Subject    digest.Digest      `json:"subject"`
	Descriptor ocispec.Descriptor `json:"descriptor"`
}

// referrerSubjects lists every subject that has a referrers directory.
func (s *Store) referrerSubjects(ctx context.Context) ([]digest.Digest, error) {
	ents, err := os.ReadDir(s.path(referrersDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.path(referrersDir), err)
	}
	var out []digest.Digest
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if e.IsDir() && checkSHA256(d) == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

func (s *Store) readReferrer(rel string) (ocispec.Descriptor, error) {
	p := s.path(rel)
	b, err := readSmall(p, maxRecordSize)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var desc ocispec.Descriptor
	if err := json.Unmarshal(b, &desc); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read %s: %w", p, err)
	}
	if err := CheckReferrer(desc); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read %s: %w", p, err)
	}
	return desc, nil
}

// keepReferrers extends live (blobs reachable from the gc roots) with the
// referrers of every live subject and all they name, until nothing changes
// (a referrer may have referrers of its own). It returns the subjects whose
// records must go because the subject is not live.
func (s *Store) keepReferrers(ctx context.Context, live map[digest.Digest]ocispec.Descriptor) (dead []digest.Digest, err error) {
	subjects, err := s.referrerSubjects(ctx)
	if err != nil {
		return nil, err
	}
	done := map[digest.Digest]bool{}
	for changed := true; changed; {
		changed = false
		for _, subj := range subjects {
			if done[subj] {
				continue
			}
			if _, ok := live[subj]; !ok {
				continue
			}
			done[subj] = true
			changed = true
			refs, err := s.Referrers(ctx, subj)
			if err != nil {
				return nil, err
			}
			// Stop at what is live already (the subject, shared blobs).
			err = s.walkGraph(ctx, refs, func(d ocispec.Descriptor, _ *ocispec.Descriptor) (bool, error) {
				if _, ok := live[d.Digest]; ok {
					return false, nil
				}
				live[d.Digest] = d
				return true, nil
			}, nil)
			if err != nil {
				return nil, fmt.Errorf("referrers of %s: %w", subj, err)
			}
		}
	}
	for _, subj := range subjects {
		if !done[subj] {
			dead = append(dead, subj)
		}
	}
	return dead, nil
}
