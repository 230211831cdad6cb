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
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/store"
)

// Where the store remembers which repositories of a registry hold a blob,
// so that a push to another repository of that registry mounts the blob
// instead of uploading it:
//
//	blockfile/registry/<sha256 of the registry host, 16 hex>/<sha256 of the repository, 16 hex>
//
// one file per repository: a first line "blockfile-seen/v1 <unix ns>" (when
// it was last written), the repository's name, then the hex of every blob
// seen in it, one per line, the most recent first, at most maxSeenBlobs. A
// blob's repositories are those whose records list it, the most recently
// written first, at most maxSeenRepos. A record is a hint: a wrong one
// costs one refused mount, after which the blob is uploaded. Records are
// written temp + rename and not synced (a lost one only costs a mount).
//
// Why one file per repository: a pull records every blob of its image, and
// a file per blob (the first form, whose files, named by a blob's 64 hex,
// are still read) made a first pull create hundreds of files, a tenth of
// its CPU (docs/BENCHMARKS.md).
const (
	seenDir      = "blockfile/registry"
	seenMagic    = "blockfile-seen/v1"
	maxSeenRepos = 4
	maxSeenBlobs = 1 << 20
	// maxSeenFile caps a record read (maxSeenBlobs lines and a little).
	maxSeenFile = 72 << 20
)

func seenRegistryDir(s *store.Store, registry string) string {
	h := sha256.Sum256([]byte(registry))
	return filepath.Join(s.Root(), filepath.FromSlash(seenDir), hex.EncodeToString(h[:8]))
}

// seenPath is the first form's record of blob d (read, no longer written).
func seenPath(s *store.Store, registry string, d digest.Digest) (string, error) {
	if d.Algorithm() != digest.SHA256 || d.Validate() != nil {
		return "", fmt.Errorf("registry record: digest %q: not sha256", d)
	}
	return filepath.Join(seenRegistryDir(s, registry), d.Encoded()), nil
}

func seenRepoPath(s *store.Store, registry, repo string) string {
	h := sha256.Sum256([]byte(repo))
	return filepath.Join(seenRegistryDir(s, registry), hex.EncodeToString(h[:8]))
}

// seenRecord is one repository's record.
type seenRecord struct {
	stamp int64
	repo  string
	blobs []string // hex, most recent first
}

func readSeenRecord(p, registry string) (*seenRecord, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(&limitedFile{f: f, n: maxSeenFile})
	sc.Buffer(make([]byte, 4096), 4096)
	rec := &seenRecord{}
	if !sc.Scan() {
		return nil, fmt.Errorf("registry record %s: empty", p)
	}
	head, stamp, ok := strings.Cut(sc.Text(), " ")
	if !ok || head != seenMagic {
		return nil, fmt.Errorf("registry record %s: not a %s record", p, seenMagic)
	}
	if rec.stamp, err = strconv.ParseInt(stamp, 10, 64); err != nil {
		return nil, fmt.Errorf("registry record %s: stamp: %w", p, err)
	}
	if !sc.Scan() {
		return nil, fmt.Errorf("registry record %s: no repository", p)
	}
	rec.repo = sc.Text()
	if _, err := name.NewRepository(registry + "/" + rec.repo); err != nil || rec.repo == "" {
		return nil, fmt.Errorf("registry record %s: repository %q", p, rec.repo)
	}
	for sc.Scan() && len(rec.blobs) < maxSeenBlobs {
		if hx := sc.Text(); digest.NewDigestFromEncoded(digest.SHA256, hx).Validate() == nil {
			rec.blobs = append(rec.blobs, hx)
		}
	}
	return rec, nil
}

// limitedFile reads at most n bytes of f.
type limitedFile struct {
	f *os.File
	n int64
}

func (l *limitedFile) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("record too large")
	}
	p = p[:min(int64(len(p)), l.n)]
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}

// seenIndexes caches, per store and registry, which repositories hold each
// blob, reloaded when the registry's record directory changes.
var seenIndexes sync.Map // seenKey -> *seenIndex

type seenKey struct{ root, registry string }

type seenIndex struct {
	mu    sync.Mutex
	mtime time.Time
	byHex map[string][]string
}

func loadSeen(s *store.Store, registry string) map[string][]string {
	dir := seenRegistryDir(s, registry)
	fi, err := os.Stat(dir)
	if err != nil {
		return nil
	}
	v, _ := seenIndexes.LoadOrStore(seenKey{s.Root(), registry}, &seenIndex{})
	x := v.(*seenIndex)
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.byHex != nil && fi.ModTime().Equal(x.mtime) {
		return x.byHex
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var recs []*seenRecord
	for _, e := range ents {
		if len(e.Name()) != 16 || !e.Type().IsRegular() {
			continue
		}
		if rec, err := readSeenRecord(filepath.Join(dir, e.Name()), registry); err == nil {
			recs = append(recs, rec)
		}
	}
	sort.Slice(recs, func(a, b int) bool {
		if recs[a].stamp != recs[b].stamp {
			return recs[a].stamp > recs[b].stamp
		}
		return recs[a].repo < recs[b].repo
	})
	byHex := map[string][]string{}
	for _, r := range recs {
		for _, hx := range r.blobs {
			if l := byHex[hx]; len(l) < maxSeenRepos {
				byHex[hx] = append(l, r.repo)
			}
		}
	}
	x.byHex, x.mtime = byHex, fi.ModTime()
	return byHex
}

// seenIn returns the repositories of registry that the store last saw
// holding d, most recent first. Names that do not parse are dropped.
func seenIn(s *store.Store, registry string, d digest.Digest) []string {
	if d.Algorithm() != digest.SHA256 || d.Validate() != nil {
		return nil
	}
	out := append([]string(nil), loadSeen(s, registry)[d.Encoded()]...)
	// Records of the first form, one file per blob.
	if p, err := seenPath(s, registry, d); err == nil {
		if b, err := os.ReadFile(p); err == nil && len(b) <= 64<<10 {
			for _, repo := range strings.Split(string(b), "\n") {
				if len(out) >= maxSeenRepos {
					break
				}
				if _, err := name.NewRepository(registry + "/" + repo); err == nil && repo != "" && !contains(out, repo) {
					out = append(out, repo)
				}
			}
		}
	}
	return out
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// recordSeen notes that repository repo of registry holds each of ds: its
// record lists them first, then what it listed before.
func recordSeen(s *store.Store, registry, repo string, ds []digest.Digest) error {
	if strings.ContainsAny(repo, "\n\r") {
		return fmt.Errorf("registry record: bad repository %q", repo)
	}
	p := seenRepoPath(s, registry, repo)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %d\n%s\n", seenMagic, time.Now().UnixNano(), repo)
	n := 0
	listed := map[string]bool{}
	add := func(hx string) {
		if n < maxSeenBlobs && !listed[hx] {
			listed[hx] = true
			b.WriteString(hx + "\n")
			n++
		}
	}
	for _, d := range ds {
		if d.Algorithm() != digest.SHA256 || d.Validate() != nil {
			return fmt.Errorf("registry record: digest %q: not sha256", d)
		}
		add(d.Encoded())
	}
	if old, err := readSeenRecord(p, registry); err == nil && old.repo == repo {
		for _, hx := range old.blobs {
			add(hx)
		}
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("registry record %s: %w", p, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("registry record %s: %w", p, err)
	}
	_, werr := f.Write(b.Bytes())
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
