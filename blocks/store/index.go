package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
)

func newIndex(m []ocispec.Descriptor) ocispec.Index {
	if m == nil {
		m = []ocispec.Descriptor{}
	}
	return ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: m,
	}
}

// Tag points name at desc in index.json (the entry carries
// org.opencontainers.image.ref.name=name), replacing any entry of that name.
// The blob must be present. Concurrent taggers, in this process or others,
// are serialised by a file lock; index.json is replaced atomically.
func (s *Store) Tag(ctx context.Context, name string, desc ocispec.Descriptor) error {
	// The name is printed by ls and may name an output path: only image
	// references (blocks.ValidateName) become tags.
	if err := blocks.ValidateName(name); err != nil {
		return fmt.Errorf("tag: %w: %w", err, ErrInvalid)
	}
	entry := desc
	entry.Annotations = maps.Clone(desc.Annotations)
	if entry.Annotations == nil {
		entry.Annotations = map[string]string{}
	}
	entry.Annotations[ocispec.AnnotationRefName] = name
	return s.updateIndex(ctx, func(idx *ocispec.Index) (bool, error) {
		// Checked under the lock, which gc holds while it sweeps: the blob
		// cannot go between this check and the tag.
		ok, err := s.Exists(ctx, desc.Digest)
		if err != nil {
			return false, fmt.Errorf("tag %s: %w", name, err)
		}
		if !ok {
			return false, fmt.Errorf("tag %s: blob %s (%s): %w", name, desc.Digest, s.BlobPath(desc.Digest), ErrNotFound)
		}
		for i, m := range idx.Manifests {
			if m.Annotations[ocispec.AnnotationRefName] == name {
				idx.Manifests[i] = entry
				return true, nil
			}
		}
		idx.Manifests = append(idx.Manifests, entry)
		return true, nil
	})
}

// Resolve returns the descriptor tagged name (with its annotations).
func (s *Store) Resolve(ctx context.Context, name string) (ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] == name {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("tag %q in store %s: %w", name, s.root, ErrNotFound)
}

// Tags returns every named entry of index.json. Entries without a name
// (written by other tools) are not listed but are kept and count as gc roots.
func (s *Store) Tags(ctx context.Context) (map[string]ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	tags := make(map[string]ocispec.Descriptor, len(idx.Manifests))
	for _, m := range idx.Manifests {
		if n := m.Annotations[ocispec.AnnotationRefName]; n != "" {
			tags[n] = m
		}
	}
	return tags, nil
}

// Untag removes the entry named name; ErrNotFound if there is none. The blobs
// stay until gc.
func (s *Store) Untag(ctx context.Context, name string) error {
	return s.updateIndex(ctx, func(idx *ocispec.Index) (bool, error) {
		kept := idx.Manifests[:0]
		found := false
		for _, m := range idx.Manifests {
			if m.Annotations[ocispec.AnnotationRefName] == name {
				found = true
				continue
			}
			kept = append(kept, m)
		}
		if !found {
			return false, fmt.Errorf("untag %q in store %s: %w", name, s.root, ErrNotFound)
		}
		idx.Manifests = kept
		return true, nil
	})
}

// roots returns every index.json entry, named or not.
func (s *Store) roots() ([]ocispec.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	return idx.Manifests, nil
}

func (s *Store) readIndex() (*ocispec.Index, error) {
	p := s.path(indexFile)
	b, err := readSmall(p, maxIndexSize)
	if errors.Is(err, os.ErrNotExist) {
		idx := newIndex(nil)
		return &idx, nil
	}
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return &idx, nil
}

// updateIndex runs a read-modify-write of index.json under the index lock.
func (s *Store) updateIndex(ctx context.Context, fn func(*ocispec.Index) (changed bool, err error)) error {
	unlock, err := s.lockIndex(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	changed, err := fn(idx)
	if err != nil || !changed {
		return err
	}
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.path(indexFile), err)
	}
	// The blobs a tag points to were renamed into place earlier; make those
	// renames durable before the tag that names them.
	if err := syncDir(filepath.Join(s.root, blobsDir, digest.SHA256.String())); err != nil {
		return err
	}
	return s.replaceFile(indexFile, b, true)
}

// lockIndex takes the store-wide exclusive lock that guards index.json (and
// that gc holds while it marks and sweeps). It waits until ctx is done.
func (s *Store) lockIndex(ctx context.Context) (unlock func(), err error) {
	s.mu.Lock()
	fl := flock.New(s.path(lockFile))
	ok, err := fl.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil || !ok {
		s.mu.Unlock()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("lock %s: %w", fl.Path(), err)
	}
	return func() {
		fl.Unlock()
		fl.Close()
		s.mu.Unlock()
	}, nil
}
