package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
)

// walk calls f for every command under root.
func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, s := range c.Commands() {
		walk(s, f)
	}
}

// TestVerbsShareFlags: every verb's --progress, -o/--output and --json come
// from the shared helpers, so they take the same values everywhere.
func TestVerbsShareFlags(t *testing.T) {
	probe := &cobra.Command{Use: "probe"}
	var p string
	addProgressFlag(probe, &p)
	wantProgress := probe.Flags().Lookup("progress")
	n := 0
	walk(newRootCmd(), func(c *cobra.Command) {
		if f := c.Flags().Lookup("progress"); f != nil {
			n++
			if f.Usage != wantProgress.Usage || f.DefValue != wantProgress.DefValue {
				t.Errorf("%s --progress: usage %q default %q, want the shared flag", c.CommandPath(), f.Usage, f.DefValue)
			}
		}
		if f := c.Flags().Lookup("output"); f != nil && f.Shorthand != "o" {
			t.Errorf("%s --output has no -o", c.CommandPath())
		}
		if f := c.Flags().Lookup("json"); f != nil && f.Value.Type() != "bool" {
			t.Errorf("%s --json is a %s flag", c.CommandPath(), f.Value.Type())
		}
	})
	if n < 5 { // export, hydrate, build, bundle create, bundle apply
		t.Errorf("%d verbs have --progress, want at least 5", n)
	}
	for _, path := range [][]string{{"bundle", "create"}, {"bundle", "apply"}, {"hydrate"}, {"inventory"}} {
		c, _, err := newRootCmd().Find(path)
		if err != nil || c.Flags().ShorthandLookup("o") == nil {
			t.Errorf("%v: no -o (%v)", path, err)
		}
	}
}

func TestCheckProgress(t *testing.T) {
	for _, m := range []string{"auto", "plain", "tty", "quiet", "none"} {
		if _, err := checkProgress(m); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	if _, err := checkProgress("fancy"); exitCode(err) != exitUsage {
		t.Errorf("fancy: %v, want a usage error", err)
	}
	// auto is plain lines when stderr is not a terminal (a CI log).
	var buf bytes.Buffer
	if w, plain, err := progressOutput("auto", &buf); w != &buf || !plain || err != nil {
		t.Errorf("auto on a buffer: %v %v %v, want plain lines on it", w, plain, err)
	}
	if w, _, _ := progressOutput("quiet", &buf); w != nil {
		t.Error("quiet: got a writer")
	}
	if _, plain, _ := progressOutput("tty", &buf); plain {
		t.Error("tty: got plain lines")
	}
}

// cliRunner returns a function running the real binary (verbs keep flag
// state in-process, so each run gets a fresh process, as users do).
func cliRunner(t *testing.T) func(args ...string) (string, string, int) {
	bin := buildBlockfile(t)
	store := t.TempDir()
	return func(args ...string) (string, string, int) {
		t.Helper()
		return run(t, bin, store, args...)
	}
}

func TestVersion(t *testing.T) {
	execCLI := cliRunner(t)
	out, _, code := execCLI("version", "--json")
	var info struct {
		Version       string `json:"version"`
		FormatVersion int    `json:"formatVersion"`
		GoVersion     string `json:"goVersion"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || code != 0 {
		t.Fatalf("version --json: exit %d, %v\n%s", code, err, out)
	}
	if info.FormatVersion != blocks.FormatVersion || info.GoVersion != runtime.Version() || info.Version == "" {
		t.Errorf("version --json = %+v", info)
	}
	text, _, _ := execCLI("version")
	flag, _, code := execCLI("--version")
	if code != 0 || flag != text || !strings.Contains(text, "format version:  1") || !strings.Contains(text, runtime.Version()) {
		t.Errorf("--version (exit %d):\n%s\nversion:\n%s", code, flag, text)
	}
}

// TestJSONErrors: with --json a failure is one JSON object on stdout, with
// the exit code the process returns; usage errors exit 2 everywhere.
func TestJSONErrors(t *testing.T) {
	execCLI := cliRunner(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"export", "--json", "--store", dir, "ftp://x/y", "n"}, exitUsage},       // unknown transport
		{[]string{"hydrate", "--json", "--store", dir, "nosuch", "-o", "foo"}, exitUsage}, // unknown transport
		{[]string{"ls", "--json", "--store", dir, "--nosuchflag"}, exitUsage},
		{[]string{"hydrate", "--json", "--store", dir, "nosuch", "oci:" + dir + "/out"}, exitFailed},
		{[]string{"hydrate", "--json", "--store", dir, "nosuch", "-o", "oci:" + dir + "/out"}, exitFailed},
		{[]string{"hydrate", "--json", "--store", dir, "nosuch", "-o", "oci:" + dir + "/out", "extra"}, exitUsage},
		{[]string{"bundle", "apply", "--json", "--store", dir, dir + "/missing.bundle"}, exitFailed},
		{[]string{"export", "--json", "--progress", "fancy", "--store", dir, "oci:" + dir, "n"}, exitUsage},
	} {
		out, errOut, code := execCLI(c.args...)
		var e jsonError
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Errorf("%v: stdout is not one JSON object: %v\n%s", c.args, err, out)
			continue
		}
		if code != c.code || e.ExitCode != code || e.Error == "" || e.Usage != (code == exitUsage) {
			t.Errorf("%v: exit %d, JSON %+v; want exit %d", c.args, code, e, c.code)
		}
		if !strings.Contains(errOut, e.Error) {
			t.Errorf("%v: stderr %q lacks the error", c.args, errOut)
		}
	}
	// Without --json, stdout stays empty.
	if out, _, code := execCLI("export", "--store", dir, "ftp://x/y", "n"); out != "" || code != exitUsage {
		t.Errorf("no --json: exit %d, stdout %q", code, out)
	}
}
