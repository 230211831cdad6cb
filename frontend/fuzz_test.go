package frontend

import (
	"path"
	"strings"
	"testing"
)

// FuzzParse: whatever the Dockerfile, Parse never panics; every IMPORT it
// accepts names a sha256 block and an absolute, clean destination inside a
// stage, and Rewrite of an accepted Dockerfile never panics and leaves no
// IMPORT instruction behind.
func FuzzParse(f *testing.F) {
	hex := strings.Repeat("ab", 32)
	for _, s := range []string{
		"FROM scratch\nIMPORT block@sha256:" + hex + " /app/a.jar\n",
		"FROM scratch AS base\nIMPORT --chmod=0755 --chown=1000:1001 \\\n  block@sha256:" + hex + " /opt/t/\nRUN true\nFROM base\nIMPORT block@sha256:" + hex + " /\n",
		"ARG X=1\nFROM scratch\nIMPORT block@sha256:" + hex + " $X\n",
		"IMPORT block@sha256:" + hex + " /a\n",
		"FROM scratch\nIMPORT --chown=0 block@sha256:" + hex + " relative\n",
		"FROM scratch\nimport block@sha256:" + hex + " /a/../../b\n# comment\nIMPORT\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, dt []byte) {
		df, err := Parse(dt)
		if err != nil {
			return
		}
		for _, r := range df.Runs {
			if len(r.Imports) == 0 {
				t.Fatal("an empty run")
			}
			for _, in := range r.Imports {
				if err := in.Block.Validate(); err != nil || in.Block.Algorithm() != "sha256" {
					t.Fatalf("accepted block %q", in.Block)
				}
				d := strings.TrimSuffix(in.Dest, "/")
				if !path.IsAbs(in.Dest) || (d != "" && path.Clean(d) != d) {
					t.Fatalf("accepted destination %q", in.Dest)
				}
				if in.Stage < 0 || in.Stage >= len(df.Stages) {
					t.Fatalf("import in stage %d of %d", in.Stage, len(df.Stages))
				}
			}
		}
		out := df.Rewrite(func(string) bool { return false })
		again, err := Parse(out)
		if err != nil {
			return // upstream may refuse what it accepted once rewritten (e.g. odd ARGs); no panic is the property
		}
		if len(again.Runs) != 0 {
			t.Fatalf("the rewritten Dockerfile still has %d IMPORT runs:\n%s", len(again.Runs), out)
		}
	})
}
