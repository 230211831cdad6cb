package frontend

import (
	"errors"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestParseRunsAndRewrite(t *testing.T) {
	src := strings.Join([]string{
		"FROM scratch AS base",                        // 1
		"IMPORT block@sha256:" + hexA + " /app/a.jar", // 2
		"# a comment inside the run",                  // 3
		"IMPORT --chmod=0755 --chown=1000:1001 \\",    // 4
		"  block@sha256:" + hexB + " /app/b.jar",      // 5
		"RUN true",                                    // 6
		"FROM base AS blockfile-import-7",             // 7
		"IMPORT block@sha256:" + hexA + " /opt/t/",    // 8
		"",
	}, "\n")
	df, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(df.Runs) != 2 {
		t.Fatalf("runs = %d, want 2", len(df.Runs))
	}
	r0 := df.Runs[0]
	if len(r0.Imports) != 2 {
		t.Fatalf("run 0 has %d imports, want 2", len(r0.Imports))
	}
	b := r0.Imports[1]
	if b.Dest != "/app/b.jar" || b.Mode == nil || *b.Mode != 0o755 || b.Owner == nil || b.Owner.UID != 1000 || b.Owner.GID != 1001 {
		t.Errorf("second import = %+v", b.Import)
	}
	if loc := r0.Location(); loc[0].Start.Line != 2 || loc[0].End.Line != 5 {
		t.Errorf("run 0 location = %+v, want lines 2-5", loc)
	}
	if df.Runs[1].Imports[0].Stage != 1 || df.Runs[1].Imports[0].Dest != "/opt/t/" {
		t.Errorf("run 1 = %+v", df.Runs[1].Imports[0])
	}

	out := df.Rewrite(func(n string) bool { return n == "blockfile-import-2" })
	lines := strings.Split(string(out), "\n")
	want := []string{
		"FROM scratch AS base",
		"COPY --link --from=blockfile-import-2-2 / /",
		"# a comment inside the run",
		"",
		"",
		"RUN true",
		"FROM base AS blockfile-import-7",
		// the stage name blockfile-import-7 is taken, but this run is on line 8
		"COPY --link --from=blockfile-import-8 / /",
		"",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("rewrite:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	if _, err := parser.Parse(strings.NewReader(string(out))); err != nil {
		t.Errorf("rewritten Dockerfile does not parse: %v", err)
	}
}

func TestRewriteAvoidsStageNames(t *testing.T) {
	src := "FROM scratch AS Blockfile-Import-2\nIMPORT block@sha256:" + hexA + " /a\n"
	df, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	out := string(df.Rewrite(nil))
	if !strings.Contains(out, "--from=blockfile-import-2-2 ") {
		t.Errorf("generated name clashes with a stage name:\n%s", out)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"bad digest", "IMPORT block@sha256:1234 /a", "invalid block reference"},
		{"upper hex", "IMPORT block@sha256:" + strings.ToUpper(hexA) + " /a", "invalid block reference"},
		{"no block prefix", "IMPORT sha256:" + hexA + " /a", "invalid block reference"},
		{"relative dest", "IMPORT block@sha256:" + hexA + " app/a.jar", "must be an absolute path"},
		{"missing dest", "IMPORT block@sha256:" + hexA, "missing destination"},
		{"no args", "IMPORT", "missing block@sha256"},
		{"unknown flag", "IMPORT --link block@sha256:" + hexA + " /a", "unknown flag: --link"},
		{"unknown flag with value", "IMPORT --from=x block@sha256:" + hexA + " /a", "unknown flag: --from"},
		{"too many", "IMPORT block@sha256:" + hexA + " /a /b", "too many arguments"},
		{"variable", "IMPORT block@sha256:" + hexA + " $DEST", "variables are not expanded"},
		{"bad chmod", "IMPORT --chmod=u+x block@sha256:" + hexA + " /a", "invalid --chmod"},
		{"named chown", "IMPORT --chown=app block@sha256:" + hexA + " /a", "numeric UID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "FROM scratch\n\n" + tc.line + "\n"
			_, err := Parse([]byte(src))
			var ie *ImportError
			if !errors.As(err, &ie) {
				t.Fatalf("err = %v, want an *ImportError", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "line 3") {
				t.Errorf("err = %q, want it to contain %q and line 3", err, tc.want)
			}
			if ie.Location[0].Start.Line != 3 {
				t.Errorf("location = %+v, want line 3", ie.Location)
			}
		})
	}
}

func TestParseImportBeforeFrom(t *testing.T) {
	_, err := Parse([]byte("IMPORT block@sha256:" + hexA + " /a\nFROM scratch\n"))
	if err == nil || !strings.Contains(err.Error(), "before the first FROM") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseNoImport(t *testing.T) {
	df, err := Parse([]byte("FROM scratch\nCOPY a /a\n"))
	if err != nil || len(df.Runs) != 0 {
		t.Fatalf("df = %+v, err = %v", df, err)
	}
}

func TestChain(t *testing.T) {
	src := "ARG BASE=one\nFROM scratch AS one\nFROM scratch AS two\nFROM ${BASE} AS three\nFROM three AS four\nFROM scratch AS five\n"
	df, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	got := df.chain(map[string]string{"target": "four"})
	if !got[0] || got[1] || !got[2] || !got[3] || got[4] || len(got) != 3 {
		t.Errorf("chain(four) = %v, want stages 0, 2, 3", got)
	}
	got = df.chain(map[string]string{"target": "four", "build-arg:BASE": "two"})
	if got[0] || !got[1] {
		t.Errorf("chain(four, BASE=two) = %v, want stage 1 not 0", got)
	}
	if got := df.chain(nil); len(got) != 1 || !got[4] {
		t.Errorf("chain() = %v, want the last stage only", got)
	}
}
