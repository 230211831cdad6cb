package tree

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
)

// Version is the value of the "blockfile.tree" key of a tree document.
const Version = 1

// Entry types.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
)

// DefaultLimit is a generous cap for Parse: a JDK's tree document is well
// under 1 MiB.
const DefaultLimit = 16 << 20

// ErrInvalid is wrapped by every validation error of Parse.
var ErrInvalid = errors.New("invalid tree document")

// Tree is a tree document: the content of a folder, without timestamps or
// owners, so that the same folder anywhere gives the same bytes and digest.
// The field order is the encoding order; do not reorder.
type Tree struct {
	// Version is always 1 (key "blockfile.tree").
	Version int `json:"blockfile.tree"`
	// Entries are every file, folder and symlink below the root (the root
	// itself is not listed), sorted by Path in byte order.
	Entries []Entry `json:"entries"`
}

// Entry is one path of a tree. The field order is the encoding order.
type Entry struct {
	// Path is relative to the tree root, slash-separated and clean: no
	// leading "/", no "." or ".." element, no empty element.
	Path string `json:"path"`
	// Type is TypeFile, TypeDir or TypeSymlink.
	Type string `json:"type"`
	// Mode is the permission bits, setuid, setgid and sticky included, as a
	// 4-digit octal string: "0644", "0755", "4755".
	Mode string `json:"mode"`
	// Size is the file's size in bytes (files only; omitted when 0).
	Size int64 `json:"size,omitempty"`
	// Digest is the file's block, the sha256 of its bytes (files only).
	Digest digest.Digest `json:"digest,omitempty"`
	// Target is the symlink's target, exactly as read (symlinks only).
	Target string `json:"target,omitempty"`
}

// Ref returns the block of a file entry.
func (e Entry) Ref() blocks.Ref { return blocks.Ref{Digest: e.Digest, Size: e.Size} }

// Perm returns the entry's mode bits as an fs.FileMode (permissions plus
// fs.ModeSetuid, fs.ModeSetgid, fs.ModeSticky).
func (e Entry) Perm() (fs.FileMode, error) {
	v, err := strconv.ParseUint(e.Mode, 8, 32)
	if err != nil || len(e.Mode) != 4 || v > 0o7777 {
		return 0, fmt.Errorf("%s: mode %q: want 4 octal digits up to 7777: %w", e.Path, e.Mode, ErrInvalid)
	}
	m := fs.FileMode(v & 0o777)
	if v&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if v&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if v&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m, nil
}

// FormatMode is the Entry.Mode string of m.
func FormatMode(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// Blocks returns the distinct file blocks of t, in path order of their first use.
func (t *Tree) Blocks() []blocks.Ref {
	seen := map[digest.Digest]bool{}
	var out []blocks.Ref
	for _, e := range t.Entries {
		if e.Type == TypeFile && !seen[e.Digest] {
			seen[e.Digest] = true
			out = append(out, e.Ref())
		}
	}
	return out
}

// Encode returns the canonical bytes of t: encoding/json of the structs above
// with HTML escaping off, no indentation, and a trailing newline. Entries must
// already be sorted; Encode does not reorder them.
func (t *Tree) Encode() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(t); err != nil {
		return nil, fmt.Errorf("encode tree: %w", err)
	}
	return buf.Bytes(), nil
}

// DocRef returns the digest and size of an encoded tree document.
func DocRef(doc []byte) blocks.Ref {
	return blocks.Ref{Digest: digest.FromBytes(doc), Size: int64(len(doc))}
}

// Build reads the folder dir and returns its tree document and the parsed
// tree. Each regular file is handed to add (with its path on disk), which
// stores it as a block and returns its ref. Symlinks are recorded, never
// followed; other file types (devices, sockets, fifos) are refused. Hard
// links are plain files (the same block twice). Owners and times are not
// recorded, so the same content anywhere gives the same digest.
func Build(ctx context.Context, dir string, add func(ctx context.Context, path string) (blocks.Ref, error)) ([]byte, *Tree, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("tree %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("tree %s: not a directory", dir)
	}
	t := &Tree{Version: Version, Entries: []Entry{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !utf8.ValidString(rel) {
			// JSON would replace the bad bytes and the path would change.
			return fmt.Errorf("tree %s: path %q is not valid UTF-8", dir, rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := Entry{Path: rel, Mode: FormatMode(info.Mode())}
		switch {
		case info.Mode().IsRegular():
			ref, err := add(ctx, p)
			if err != nil {
				return fmt.Errorf("tree %s: add %s: %w", dir, p, err)
			}
			e.Type, e.Digest, e.Size = TypeFile, ref.Digest, ref.Size
		case info.IsDir():
			e.Type = TypeDir
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if !utf8.ValidString(target) || target == "" {
				return fmt.Errorf("tree %s: symlink %s: target %q is empty or not valid UTF-8", dir, p, target)
			}
			// Symlink permissions mean nothing on Linux and differ on other
			// systems; fix them so the document depends on content only.
			e.Type, e.Target, e.Mode = TypeSymlink, target, "0777"
		default:
			return fmt.Errorf("tree %s: %s is a %s; a tree holds only files, folders and symlinks", dir, p, info.Mode().Type())
		}
		t.Entries = append(t.Entries, e)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("tree %s: %w", dir, err)
	}
	// WalkDir's per-directory order is not full-path byte order ("a/b" comes
	// before "a.txt" there, after it here).
	slices.SortFunc(t.Entries, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	doc, err := t.Encode()
	if err != nil {
		return nil, nil, err
	}
	return doc, t, nil
}

// Parse reads a tree document of at most limit bytes and validates it: version
// 1, no unknown keys, paths relative and clean with no "..", sorted in byte
// order without duplicates, every parent listed as a dir (a symlink is never a
// parent), fields that fit each type, and the bytes in canonical form (so one
// folder has exactly one document). Symlink targets are kept as they are; a
// consumer that materialises the tree must not follow them outside its root.
func Parse(r io.Reader, limit int64) (*Tree, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read tree document: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("tree document larger than %d bytes: %w", limit, ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var t Tree
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	canon, err := t.Encode()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(canon, b) {
		return nil, fmt.Errorf("%w: not in canonical form (fixed key order, no spaces, one trailing newline)", ErrInvalid)
	}
	return &t, nil
}

// Validate checks everything Parse checks except the byte form.
func (t *Tree) Validate() error {
	if t.Version != Version {
		return fmt.Errorf("%w: blockfile.tree is %d, want %d", ErrInvalid, t.Version, Version)
	}
	if t.Entries == nil {
		return fmt.Errorf("%w: no entries list", ErrInvalid)
	}
	types := make(map[string]string, len(t.Entries))
	prev := ""
	for i, e := range t.Entries {
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%w: entry %d (%q): %s", ErrInvalid, i, e.Path, fmt.Sprintf(format, a...))
		}
		p := e.Path
		switch {
		case p == "" || p == "." || strings.HasPrefix(p, "/") || path.Clean(p) != p:
			return bad("path must be relative and clean")
		case p == ".." || strings.HasPrefix(p, "../"):
			return bad("path escapes the root")
		case !utf8.ValidString(p) || strings.ContainsRune(p, 0):
			return bad("path is not valid UTF-8 or holds NUL")
		case i > 0 && p <= prev:
			if p == prev {
				return bad("duplicate path")
			}
			return bad("not sorted in byte order after %q", prev)
		}
		prev = p
		if dir := path.Dir(p); dir != "." {
			switch types[dir] {
			case TypeDir:
			case "":
				return bad("parent %q is not listed", dir)
			default:
				return bad("parent %q is a %s, not a dir", dir, types[dir])
			}
		}
		if _, err := e.Perm(); err != nil {
			return err
		}
		switch e.Type {
		case TypeFile:
			if err := e.Digest.Validate(); err != nil || e.Digest.Algorithm() != digest.SHA256 {
				return bad("file digest %q: want sha256:<64 hex>", e.Digest)
			}
			if e.Size < 0 {
				return bad("negative size")
			}
			if e.Target != "" {
				return bad("a file has no target")
			}
		case TypeDir:
			if e.Digest != "" || e.Size != 0 || e.Target != "" {
				return bad("a dir has no digest, size or target")
			}
		case TypeSymlink:
			if e.Digest != "" || e.Size != 0 {
				return bad("a symlink has no digest or size")
			}
			if e.Target == "" || strings.ContainsRune(e.Target, 0) {
				return bad("symlink target empty or holds NUL")
			}
		default:
			return bad("type %q: want file, dir or symlink", e.Type)
		}
		types[p] = e.Type
	}
	return nil
}
