package layer

import (
	"fmt"
	"path"
	"strings"
)

// CheckPath reports whether a tar entry name (or hard-link target) stays inside
// the root on its own: not empty, not absolute, no ".." component. Whether it
// goes through a symlink depends on the entries before it; see PathChecker.
func CheckPath(name string) error {
	if name == "" {
		return fmt.Errorf("empty name: %w", ErrUnsafePath)
	}
	if strings.HasPrefix(name, "/") {
		return fmt.Errorf("%q is absolute: %w", name, ErrUnsafePath)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return fmt.Errorf("%q has a \"..\" component: %w", name, ErrUnsafePath)
		}
	}
	return nil
}

// cleanName is name relative to the root, without "./" and trailing "/";
// "." for the root itself.
func cleanName(name string) string {
	return path.Clean(name)
}

// PathChecker checks the entry names of one layer in order. Besides CheckPath
// it refuses a name (or hard-link target) that goes through a symlink created
// by an earlier entry of the same layer: `lib -> /etc` then `lib/passwd` would
// write outside the root when extracted.
type PathChecker struct {
	symlinks map[string]struct{}
}

// Check checks one entry and records it. typeflag is the tar typeflag; a
// symlink entry makes later names under it unsafe, any other entry at the same
// name replaces the symlink.
func (p *PathChecker) Check(name, linkname string, typeflag byte) error {
	if err := CheckPath(name); err != nil {
		return err
	}
	n := cleanName(name)
	if err := p.throughSymlink(name, n); err != nil {
		return err
	}
	if typeflag == '1' { // hard link: the target must be safe too
		if err := CheckPath(linkname); err != nil {
			return fmt.Errorf("hard link %q: target: %w", name, err)
		}
		if err := p.throughSymlink(linkname, cleanName(linkname)); err != nil {
			return fmt.Errorf("hard link %q: target: %w", name, err)
		}
	}
	if p.symlinks == nil {
		p.symlinks = map[string]struct{}{}
	}
	if typeflag == '2' {
		p.symlinks[n] = struct{}{}
	} else {
		delete(p.symlinks, n)
	}
	return nil
}

// throughSymlink checks every proper prefix of the clean name n.
func (p *PathChecker) throughSymlink(name, n string) error {
	if len(p.symlinks) == 0 {
		return nil
	}
	for i := 0; i < len(n); i++ {
		if n[i] != '/' {
			continue
		}
		if _, ok := p.symlinks[n[:i]]; ok {
			return fmt.Errorf("%q goes through the symlink %q of the same layer: %w", name, n[:i], ErrUnsafePath)
		}
	}
	return nil
}
