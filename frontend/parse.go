package frontend

import (
	"bytes"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/llbgen"
)

// Instruction is one parsed IMPORT line.
type Instruction struct {
	llbgen.Import
	// Location is the instruction's line range in the Dockerfile.
	Location []parser.Range
	// Stage is the index of the stage (FROM) holding the instruction.
	Stage int
}

// Run is a run of consecutive IMPORT instructions in one stage: one layer.
type Run struct {
	Imports []Instruction
	// Name is the named build context the run's COPY reads (set by Rewrite).
	Name string
}

// Location spans the run's lines.
func (r *Run) Location() []parser.Range {
	first, last := r.Imports[0].Location, r.Imports[len(r.Imports)-1].Location
	return []parser.Range{{Start: first[0].Start, End: last[len(last)-1].End}}
}

// Stage is one FROM of the Dockerfile.
type Stage struct {
	Name string // lower-cased AS name, "" if none
	Base string // the FROM image or stage name, unexpanded
}

// Dockerfile is a parsed Dockerfile with its IMPORT instructions.
type Dockerfile struct {
	Data    []byte
	AST     *parser.Node
	Stages  []Stage
	Runs    []*Run
	MetaArg map[string]string // ARG defaults before the first FROM
}

// ImportError is a malformed IMPORT instruction, at its location.
type ImportError struct {
	Location []parser.Range
	Err      error
}

func (e *ImportError) Error() string { return e.Err.Error() }
func (e *ImportError) Unwrap() error { return e.Err }

var blockRef = regexp.MustCompile(`^block@(sha256:[0-9a-f]{64})$`)

// Parse parses a Dockerfile and its IMPORT instructions. A malformed IMPORT
// is an *ImportError carrying the instruction's location; other syntax
// errors are upstream's parser errors.
func Parse(dt []byte) (*Dockerfile, error) {
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, err
	}
	df := &Dockerfile{Data: dt, AST: res.AST, MetaArg: map[string]string{}}
	var prev *parser.Node // the previous instruction, to find runs
	for _, n := range res.AST.Children {
		switch strings.ToLower(n.Value) {
		case "from":
			st := Stage{}
			if n.Next != nil {
				st.Base = n.Next.Value
				if a := n.Next.Next; a != nil && strings.EqualFold(a.Value, "as") && a.Next != nil {
					st.Name = strings.ToLower(a.Next.Value)
				}
			}
			df.Stages = append(df.Stages, st)
		case "arg":
			if len(df.Stages) == 0 {
				for a := n.Next; a != nil; a = a.Next {
					k, v, _ := strings.Cut(a.Value, "=")
					df.MetaArg[k] = v
				}
			}
		case "import":
			in, err := parseImport(n)
			if err != nil {
				return nil, &ImportError{Location: n.Location(), Err: err}
			}
			if len(df.Stages) == 0 {
				return nil, &ImportError{Location: n.Location(), Err: fmt.Errorf("dockerfile parse error on line %d: IMPORT before the first FROM", n.StartLine)}
			}
			in.Stage = len(df.Stages) - 1
			if prev != nil && strings.EqualFold(prev.Value, "import") {
				r := df.Runs[len(df.Runs)-1]
				r.Imports = append(r.Imports, in)
			} else {
				df.Runs = append(df.Runs, &Run{Imports: []Instruction{in}})
			}
		}
		prev = n
	}
	return df, nil
}

// parseImport parses `IMPORT [--chmod=MODE] [--chown=UID:GID] block@sha256:<hex> <dest>`.
// There is no variable expansion: IMPORT is rewritten before ARG and ENV
// exist, so a "$" is refused rather than silently kept.
func parseImport(n *parser.Node) (Instruction, error) {
	line := n.StartLine
	bad := func(format string, a ...any) error {
		return fmt.Errorf("dockerfile parse error on line %d: IMPORT: %s", line, fmt.Sprintf(format, a...))
	}
	in := Instruction{Location: n.Location()}
	if strings.Contains(n.Original, "$") {
		return in, bad("variables are not expanded in IMPORT (it is resolved before ARG and ENV); write the digest and an absolute destination literally")
	}
	fields := strings.Fields(n.Original)
	if len(fields) > 0 {
		fields = fields[1:] // the instruction word
	}
	for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
		k, v, ok := strings.Cut(strings.TrimPrefix(fields[0], "--"), "=")
		fields = fields[1:]
		if k != "chmod" && k != "chown" {
			return in, bad("unknown flag: --%s (IMPORT takes --chmod and --chown)", k)
		}
		if !ok || v == "" {
			return in, bad("flag --%s needs a value (--%s=...)", k, k)
		}
		switch k {
		case "chmod":
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil || m > 0o7777 {
				return in, bad("invalid --chmod=%s: want an octal mode up to 7777, like 0644", v)
			}
			mode := uint32(m)
			in.Mode = &mode
		case "chown":
			o, err := parseOwner(v)
			if err != nil {
				return in, bad("invalid --chown=%s: %v", v, err)
			}
			in.Owner = &o
		}
	}
	switch {
	case len(fields) == 0:
		return in, bad("missing block@sha256:<hex> and destination")
	case len(fields) == 1:
		return in, bad("missing destination after %s", fields[0])
	case len(fields) > 2:
		return in, bad("too many arguments: want block@sha256:<hex> <dest>, got %d", len(fields))
	}
	m := blockRef.FindStringSubmatch(fields[0])
	if m == nil {
		return in, bad("invalid block reference %q: want block@sha256:<64 lowercase hex digits>", fields[0])
	}
	in.Block = digest.Digest(m[1])
	dest := fields[1]
	if !path.IsAbs(dest) {
		return in, bad("destination %q must be an absolute path (WORKDIR does not apply to IMPORT)", dest)
	}
	in.Dest = path.Clean(dest)
	if strings.HasSuffix(dest, "/") && in.Dest != "/" {
		in.Dest += "/" // kept: a trailing slash says "a folder" (tree blocks)
	}
	return in, nil
}

// parseOwner parses numeric UID[:GID]; GID defaults to UID.
func parseOwner(s string) (llbgen.Owner, error) {
	u, g, hasG := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(u, 10, 31)
	if err != nil {
		return llbgen.Owner{}, fmt.Errorf("want numeric UID[:GID] (the import layer is built apart from the image, where user names cannot be looked up)")
	}
	gid := uid
	if hasG {
		if gid, err = strconv.ParseUint(g, 10, 31); err != nil {
			return llbgen.Owner{}, fmt.Errorf("want numeric UID[:GID] (the import layer is built apart from the image, where user names cannot be looked up)")
		}
	}
	return llbgen.Owner{UID: int(uid), GID: int(gid)}, nil
}

// Rewrite returns the Dockerfile that upstream builds: each run becomes one
// `COPY --link --from=<run name> / /` on its first line, and the other lines
// of the run's IMPORTs are blanked, so every other line keeps its number.
// Run names are picked so that they clash with no stage name and no name in
// taken (the named contexts the client already passes).
func (df *Dockerfile) Rewrite(taken func(name string) bool) []byte {
	used := map[string]bool{}
	for _, s := range df.Stages {
		if s.Name != "" {
			used[s.Name] = true
		}
	}
	lines := strings.SplitAfter(string(df.Data), "\n")
	blank := func(i int) { // 1-based line; keep the line ending
		l := lines[i-1]
		end := l[len(strings.TrimRight(l, "\r\n")):]
		lines[i-1] = end
	}
	for _, r := range df.Runs {
		first := r.Imports[0].Location[0].Start.Line
		base := fmt.Sprintf("blockfile-import-%d", first)
		name := base
		for i := 2; used[name] || (taken != nil && taken(name)); i++ {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		used[name] = true
		r.Name = name
		for _, in := range r.Imports {
			for _, rg := range in.Location {
				for l := rg.Start.Line; l <= rg.End.Line; l++ {
					blank(l)
				}
			}
		}
		l := lines[first-1]
		lines[first-1] = "COPY --link --from=" + name + " / /" + l
	}
	return []byte(strings.Join(lines, ""))
}
