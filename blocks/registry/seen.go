package registry

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/store"
)

// Where the store remembers which repositories of a registry hold a blob,
// so that a push to another repository of that registry mounts the blob
// instead of uploading it:
//
//	blockfile/registry/<sha256 of the registry host, 16 hex>/<blob hex>
//
// one file per blob, holding repository names one per line, the most recent
// first, at most maxSeenRepos. A record is a hint: a wrong one costs one
// refused mount, after which the blob is uploaded. Records are written
// temp + rename and not synced (a lost one only costs a mount). Their
// number is bounded by the blobs pushed and pulled; each is a few dozen
// bytes.
const (
	seenDir      = "blockfile/registry"
	maxSeenRepos = 4
)

func seenPath(s *store.Store, registry string, d digest.Digest) (string, error) {
	if d.Algorithm() != digest.SHA256 || d.Validate() != nil {
		return "", fmt.Errorf("registry record: digest %q: not sha256", d)
	}
	h := sha256.Sum256([]byte(registry))
	return filepath.Join(s.Root(), filepath.FromSlash(seenDir), hex.EncodeToString(h[:8]), d.Encoded()), nil
}

// seenIn returns the repositories of registry that the store last saw
// holding d, most recent first. Names that do not parse are dropped.
func seenIn(s *store.Store, registry string, d digest.Digest) []string {
	p, err := seenPath(s, registry, d)
	if err != nil {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 4096)
	for sc.Scan() && len(out) < maxSeenRepos {
		repo := sc.Text()
		if _, err := name.NewRepository(registry + "/" + repo); err == nil && repo != "" {
			out = append(out, repo)
		}
	}
	return out
}

// recordSeen notes that repository repo of registry holds each of ds.
func recordSeen(s *store.Store, registry, repo string, ds []digest.Digest) error {
	if strings.ContainsAny(repo, "\n\r") {
		return fmt.Errorf("registry record: bad repository %q", repo)
	}
	for _, d := range ds {
		prev := seenIn(s, registry, d)
		if len(prev) > 0 && prev[0] == repo {
			continue
		}
		var b bytes.Buffer
		b.WriteString(repo + "\n")
		n := 1
		for _, r := range prev {
			if r != repo && n < maxSeenRepos {
				b.WriteString(r + "\n")
				n++
			}
		}
		if err := writeSeen(s, registry, d, b.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

func writeSeen(s *store.Store, registry string, d digest.Digest, data []byte) error {
	p, err := seenPath(s, registry, d)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("registry record %s: %w", p, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("registry record %s: %w", p, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("registry record %s: %w", p, err)
	}
	if err := os.Rename(f.Name(), p); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("registry record %s: %w", p, err)
	}
	return nil
}
