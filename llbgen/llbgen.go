package llbgen

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/buildkit/client/llb"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/tree"
)

// Import is one parsed IMPORT instruction.
type Import struct {
	// Block is the digest named by block@<digest>: a file block or, when Tree
	// is set, a tree document.
	Block digest.Digest
	// Dest is the absolute, clean destination. A file block lands at Dest; a
	// tree block's entries land under Dest.
	Dest string
	// Mode is --chmod: the permission bits (setuid/setgid/sticky in their
	// Unix positions, 04000/02000/01000) of the imported files. Nil keeps
	// the default: 0644 for a file block, the tree's modes for a tree.
	Mode *uint32
	// Owner is --chown. Nil means root (0:0): the import layer is built
	// apart from the image, so owners never depend on the source's.
	Owner *Owner
	// Tree is the parsed tree document when Block is a tree block.
	Tree *tree.Tree
}

// Owner is a numeric owner.
type Owner struct{ UID, GID int }

// DefaultFileMode is the mode of an imported file block without --chmod.
const DefaultFileMode = 0o644

// dirMode is the mode of the parent folders an import creates.
const dirMode = 0o755

// BlockSource says where the bytes of a block are: a state and the path of
// the block's file inside it.
type BlockSource interface {
	Block(d digest.Digest) (llb.State, string)
}

// Options tune ImportState.
type Options struct {
	// Time is the mtime of every file and folder of the import layer
	// (the Unix epoch when zero, or SOURCE_DATE_EPOCH when the build sets it).
	Time time.Time
	// Constraints are passed to the FileOp (custom name, platform, ...).
	Constraints []llb.ConstraintsOpt
	// Requires are states that must build before the import may use its
	// blocks (a verification step); their content is not placed. Each is
	// copied into the staging tree and removed again, which makes it an
	// input of the FileOp without changing the layer.
	Requires []llb.State
}

// requiresDir is where ImportState stages Options.Requires, then removes them.
const requiresDir = "/.blockfile-requires"

// Blocks returns every block the imports read, in first-use order: the
// file blocks, and for tree imports the tree's file blocks (not the tree
// document, which the caller has already read).
func Blocks(imports []Import) []digest.Digest {
	seen := map[digest.Digest]bool{}
	var out []digest.Digest
	add := func(d digest.Digest) {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	for _, im := range imports {
		if im.Tree == nil {
			add(im.Block)
			continue
		}
		for _, r := range im.Tree.Blocks() {
			add(r.Digest)
		}
	}
	return out
}

// entry is one path of the import layer.
type entry struct {
	typ    string // tree.TypeFile, TypeDir, TypeSymlink
	mode   uint32 // Unix permission bits incl. 07000
	owner  Owner
	block  digest.Digest // files
	target string        // symlinks
	line   int           // index of the import that placed it
}

// ImportState returns the state holding exactly the files the imports place
// (one run of consecutive IMPORT lines): a single FileOp on scratch, with
// fixed modes, owners and times on every file and on every folder it creates,
// so that the layer made from it is reproducible and independent of the
// image below.
//
// Two imports placing different things at one path, or a path under a file,
// are errors naming both.
func ImportState(imports []Import, src BlockSource, opt Options) (llb.State, error) {
	if len(imports) == 0 {
		return llb.State{}, errors.New("llbgen: no imports")
	}
	if src == nil {
		return llb.State{}, errors.New("llbgen: no block source")
	}
	entries, err := plan(imports)
	if err != nil {
		return llb.State{}, err
	}
	t := opt.Time
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	t = t.UTC()

	// The files are placed first (phase 1); placing a file changes its
	// folder's mtime, and a folder made by an earlier action is not fixed by
	// a later one. So phase 2 copies the whole staged tree onto scratch with
	// CreatedTime set, which fsutil applies to every entry after its
	// contents: every folder ends at t. Both phases are one FileOp.
	var fa *llb.FileAction
	chain := func(next func(*llb.FileAction) *llb.FileAction, first func() *llb.FileAction) {
		if fa == nil {
			fa = first()
		} else {
			fa = next(fa)
		}
	}
	for i, st := range opt.Requires {
		dst := fmt.Sprintf("%s/%d", requiresDir, i)
		info := &llb.CopyInfo{CopyDirContentsOnly: true, CreateDestPath: true}
		chain(func(a *llb.FileAction) *llb.FileAction { return a.Copy(st, "/", dst, info) },
			func() *llb.FileAction { return llb.Copy(st, "/", dst, info) })
	}
	if len(opt.Requires) > 0 {
		fa = fa.Rm(requiresDir)
	}
	for _, p := range slices.Sorted(maps.Keys(entries)) {
		e := entries[p]
		own := llb.WithUIDGID(e.owner.UID, e.owner.GID)
		ct := llb.WithCreatedTime(t)
		switch e.typ {
		case tree.TypeDir:
			mode := fs.FileMode(e.mode & 0o777)
			chain(func(a *llb.FileAction) *llb.FileAction { return a.Mkdir(p, mode, llb.WithParents(true), own, ct) },
				func() *llb.FileAction { return llb.Mkdir(p, mode, llb.WithParents(true), own, ct) })
		case tree.TypeSymlink:
			chain(func(a *llb.FileAction) *llb.FileAction { return a.Symlink(e.target, p, own, ct) },
				func() *llb.FileAction { return llb.Symlink(e.target, p, own, ct) })
		case tree.TypeFile:
			st, srcPath := src.Block(e.block)
			info := &llb.CopyInfo{
				Mode:        &llb.ChmodOpt{Mode: fs.FileMode(e.mode)},
				ChownOpt:    &llb.ChownOpt{User: &llb.UserOpt{UID: e.owner.UID}, Group: &llb.UserOpt{UID: e.owner.GID}},
				CreatedTime: &t,
			}
			chain(func(a *llb.FileAction) *llb.FileAction { return a.Copy(st, srcPath, p, info) },
				func() *llb.FileAction { return llb.Copy(st, srcPath, p, info) })
		}
	}
	final := llb.Copy(fa.WithState(llb.Scratch()), "/", "/", &llb.CopyInfo{
		CopyDirContentsOnly: true,
		CreatedTime:         &t,
	})
	return llb.Scratch().File(final, opt.Constraints...), nil
}

// plan lists every path the imports create, parents included.
func plan(imports []Import) (map[string]entry, error) {
	entries := map[string]entry{}
	put := func(p string, e entry) error {
		if old, ok := entries[p]; ok {
			if old.typ == tree.TypeDir && e.typ == tree.TypeDir {
				if e.line >= 0 { // an explicit tree folder wins over an implied parent
					entries[p] = e
				}
				return nil
			}
			same := old
			same.line = e.line
			if same == e { // the same thing twice: harmless
				return nil
			}
			return fmt.Errorf("IMPORT: %s is placed twice (imports %d and %d of this run)", p, old.line+1, e.line+1)
		}
		entries[p] = e
		return nil
	}
	parents := func(p string) error {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if old, ok := entries[d]; ok && old.typ != tree.TypeDir {
				return fmt.Errorf("IMPORT: %s needs folder %s, but import %d places a %s there", p, d, old.line+1, old.typ)
			}
			if _, ok := entries[d]; !ok {
				entries[d] = entry{typ: tree.TypeDir, mode: dirMode, line: -1}
			}
		}
		return nil
	}
	for i, im := range imports {
		if !path.IsAbs(im.Dest) {
			return nil, fmt.Errorf("IMPORT %s: destination %q is not absolute", im.Block, im.Dest)
		}
		if err := im.Block.Validate(); err != nil {
			return nil, fmt.Errorf("IMPORT %s: %w", im.Block, err)
		}
		owner := Owner{}
		if im.Owner != nil {
			owner = *im.Owner
		}
		dest := path.Clean(im.Dest)
		if im.Tree == nil {
			if dest == "/" {
				return nil, fmt.Errorf("IMPORT %s: a file block needs a file path as destination, not /", im.Block)
			}
			mode := uint32(DefaultFileMode)
			if im.Mode != nil {
				mode = *im.Mode
			}
			if err := parents(dest); err != nil {
				return nil, err
			}
			if err := put(dest, entry{typ: tree.TypeFile, mode: mode, owner: owner, block: im.Block, line: i}); err != nil {
				return nil, err
			}
			continue
		}
		if dest != "/" {
			if err := parents(dest); err != nil {
				return nil, err
			}
			if err := put(dest, entry{typ: tree.TypeDir, mode: dirMode, owner: owner, line: i}); err != nil {
				return nil, err
			}
		}
		for _, te := range im.Tree.Entries {
			p := path.Join(dest, te.Path)
			mode, err := strconv.ParseUint(te.Mode, 8, 32)
			if err != nil || mode > 0o7777 {
				return nil, fmt.Errorf("IMPORT %s: tree entry %q: bad mode %q", im.Block, te.Path, te.Mode)
			}
			e := entry{typ: te.Type, mode: uint32(mode), owner: owner, line: i}
			switch te.Type {
			case tree.TypeFile:
				e.block = te.Digest
				if im.Mode != nil {
					e.mode = *im.Mode
				}
			case tree.TypeSymlink:
				e.target = te.Target
			case tree.TypeDir:
			default:
				return nil, fmt.Errorf("IMPORT %s: tree entry %q: unknown type %q", im.Block, te.Path, te.Type)
			}
			if err := parents(p); err != nil {
				return nil, err
			}
			if err := put(p, e); err != nil {
				return nil, err
			}
		}
	}
	return entries, nil
}

// LabelPaths returns the label entries of imports: the destination of each
// file block, and "<dest>/" for each tree block.
func LabelPaths(imports []Import) map[string]digest.Digest {
	m := make(map[string]digest.Digest, len(imports))
	for _, im := range imports {
		dest := path.Clean(im.Dest)
		if im.Tree != nil {
			dest = strings.TrimSuffix(dest, "/") + "/"
		}
		m[dest] = im.Block
	}
	return m
}

// MergeLabel returns the value of the blocks.LabelImports label: the JSON
// object in existing (the value inherited from the base image, may be empty)
// with the imports' paths added; a later import of a path wins. The encoding
// is encoding/json of a map, so keys are sorted and the value is
// reproducible.
func MergeLabel(existing string, imports []Import) (string, error) {
	m := map[string]string{}
	if strings.TrimSpace(existing) != "" {
		if err := json.Unmarshal([]byte(existing), &m); err != nil {
			return "", fmt.Errorf("label %s of the base image: %w", blocks.LabelImports, err)
		}
	}
	for p, d := range LabelPaths(imports) {
		m[p] = d.String()
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("label %s: %w", blocks.LabelImports, err)
	}
	return string(b), nil
}
