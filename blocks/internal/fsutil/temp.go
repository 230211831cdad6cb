package fsutil

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Temp file names say who owns them: "<kind>.<host>.<pid>.<random>", where
// host is a short hash of the host name. The next writer on a store removes
// the files of a process that is gone (same host, pid not running) instead
// of leaving them for hours: a killed export leaves tens of megabytes of
// spool files.

var (
	hostOnce sync.Once
	hostTag  string
)

// host is 8 hex digits of the sha256 of the host name: processes in other
// containers sharing a store (other pid namespaces) usually have another
// host name, and their pids are not judged.
func host() string {
	hostOnce.Do(func() {
		h, _ := os.Hostname()
		sum := sha256.Sum256([]byte(h))
		hostTag = hex.EncodeToString(sum[:4])
	})
	return hostTag
}

// TempPattern is the os.CreateTemp pattern of a temp file of kind (a word:
// "blob", "spool", "member", ...) owned by this process.
func TempPattern(kind string) string {
	return fmt.Sprintf("%s.%s.%d.*", kind, host(), os.Getpid())
}

// Owner parses a temp file name made from TempPattern; ok is false for any
// other name.
func Owner(name string) (hostTag string, pid int, ok bool) {
	parts := strings.Split(name, ".")
	if len(parts) < 4 {
		return "", 0, false
	}
	h, p := parts[len(parts)-3], parts[len(parts)-2]
	pid, err := strconv.Atoi(p)
	if err != nil || pid <= 0 || len(h) != 8 {
		return "", 0, false
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", 0, false
	}
	return h, pid, true
}

// Ages after which a temp file is stale.
const (
	// DeadOwnerAge: a file of a process of this host that is not running
	// any more. The short grace covers a pid just reused.
	DeadOwnerAge = time.Minute
	// UnknownOwnerAge: a file whose owner cannot be judged (another host,
	// a name without owner). Older than any write still in progress.
	UnknownOwnerAge = time.Hour
	// LiveOwnerAge: a file of a running process of this host: only if its
	// pid was reused long after the owner died.
	LiveOwnerAge = 7 * 24 * time.Hour
)

// Stale says whether the temp file name, last modified at mod, belongs to
// no running writer.
func Stale(name string, mod, now time.Time) bool {
	age := now.Sub(mod)
	h, pid, ok := Owner(name)
	switch {
	case !ok || h != host():
		return age >= UnknownOwnerAge
	case pid == os.Getpid():
		return false // ours: in use, or removed by our own cleanup
	case Alive(pid):
		return age >= LiveOwnerAge
	default:
		return age >= DeadOwnerAge
	}
}

// Sweep removes the stale temp files (see Stale) directly in dir and
// returns their paths; with dryRun it only lists them. A missing dir is not
// an error.
func Sweep(dir string, now time.Time, dryRun bool) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var removed []string
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil || !Stale(e.Name(), fi.ModTime(), now) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if dryRun {
			removed = append(removed, p)
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("remove stale temp file %s: %w", p, err)
		}
		removed = append(removed, p)
	}
	return removed, nil
}
