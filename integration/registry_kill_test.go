package integration

import (
	"bufio"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/integration/harness"
)

// killPoint says when to kill a running CLI: on a line of its stderr, or
// once some time has passed.
type killPoint struct {
	what string
	when func(line string, since time.Duration) bool
}

func killAfter(d time.Duration) killPoint {
	return killPoint{fmt.Sprintf("after %s", d), func(_ string, since time.Duration) bool { return since >= d }}
}

func killAtLine(prefix string) killPoint {
	return killPoint{"at the line " + prefix, func(line string, _ time.Duration) bool { return strings.HasPrefix(line, prefix) }}
}

// runKilled runs the CLI with args and SIGKILLs it at p; it reports
// whether the kill happened before the command ended.
func runKilled(t *testing.T, bin string, p killPoint, args ...string) bool {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	killed := false
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for open := true; open && !killed; {
		select {
		case line, ok := <-lines:
			if !ok {
				open = false
				break
			}
			if p.when(line, time.Since(start)) {
				killed = cmd.Process.Signal(syscall.SIGKILL) == nil
			}
		case <-tick.C:
			if p.when("", time.Since(start)) {
				killed = cmd.Process.Signal(syscall.SIGKILL) == nil
			}
		}
	}
	for range lines {
	}
	err = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	killed = killed && ws.Signaled()
	t.Logf("%s killed %s: %v (killed before the end: %v) after %s", args[0], p.what, err, killed, time.Since(start).Round(time.Millisecond))
	return killed
}

// TestRegistryPushPullSIGKILL: push and pull killed with SIGKILL at several
// points, then re-run, finish; the tag never names an incomplete image
// (whenever it resolves, skopeo copies the whole index), and the store
// verifies after every kill and at the end.
func TestRegistryPushPullSIGKILL(t *testing.T) {
	harness.RequireIntegration(t)
	b := getBundleImages(t)
	bin := harness.Get(t).BlockfileBin(t)
	reg := startOwnRegistry(t)
	src := copyStore(t, b.src)

	pushPoints := []killPoint{killAfter(5 * time.Millisecond), killAfter(40 * time.Millisecond), killAtLine("push "), killAfter(150 * time.Millisecond),
		{"while putting the manifests", func(line string, _ time.Duration) bool { return strings.HasSuffix(line, "manifests, then the index") }}}
	kills := 0
	for i, p := range pushPoints {
		ref := fmt.Sprintf("%s/kill/push%d:v1", reg.addr, i)
		if runKilled(t, bin, p, "push", "--store", src, "--progress", "plain", "--jobs", "1", b.v1.Name, ref) {
			kills++
		}
		// The tag is absent or names the complete image.
		raw, err := exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref).Output()
		if err == nil {
			if got := digest.FromBytes(raw); got != b.v1.Index.Digest {
				t.Errorf("push killed %s: the tag names %s, want %s or nothing", p.what, got, b.v1.Index.Digest)
			}
			if got := skopeoDigest(t, ref, true); got != b.v1.Index.Digest.String() {
				t.Errorf("push killed %s: skopeo copy --all: %s", p.what, got)
			}
		} else {
			t.Logf("push killed %s: the tag does not resolve yet", p.what)
		}
		if res := bfPush(t, bin, src, b.v1.Name, ref); res.Index.Digest != b.v1.Index.Digest {
			t.Errorf("push killed %s, re-run: %s", p.what, res.Index.Digest)
		}
		if got := skopeoDigest(t, ref, true); got != b.v1.Index.Digest.String() {
			t.Errorf("push killed %s, re-run: skopeo copy --all: %s", p.what, got)
		}
		bfMust(t, bin, "verify", "--store", src)
	}
	if kills == 0 {
		t.Errorf("no push was killed before it ended")
	}

	ref := reg.addr + "/kill/pull:v2"
	bfPush(t, bin, src, b.v2.Name, ref)
	hydrated := map[string]bool{}
	for _, l := range mustClosure(t, b.src, b.v2.Name).Hydrated {
		hydrated[l.Digest.String()] = true
	}
	pullPoints := []killPoint{killAfter(5 * time.Millisecond), killAfter(40 * time.Millisecond), killAtLine("pull "), killAfter(150 * time.Millisecond),
		{"after the downloads", func(line string, _ time.Duration) bool {
			return strings.HasPrefix(line, "pull ") && strings.HasSuffix(line, " done")
		}},
		killAtLine("hydrate")}
	kills = 0
	dir := t.TempDir()
	for i, p := range pullPoints {
		site := filepath.Join(dir, fmt.Sprintf("site%d", i))
		out := "oci:" + filepath.Join(dir, fmt.Sprintf("out%d", i))
		if runKilled(t, bin, p, "pull", "--store", site, "--progress", "plain", "--jobs", "1", "--output", out, ref) {
			kills++
		}
		checkVerifyAfterKill(t, bin, site, hydrated, "pull "+p.what)
		res := bfPull(t, bin, site, ref, "--output", out)
		if res.Standard.Digest != b.v2.Standard.Digest || len(res.Outputs) != 1 {
			t.Errorf("pull killed %s, re-run: standard %s outputs %v", p.what, res.Standard.Digest, res.Outputs)
		}
		bfMust(t, bin, "verify", "--store", site)
		if got := bfHydrate(t, bin, site, res.Name, "oci:"+filepath.Join(dir, fmt.Sprintf("check%d", i))); got != b.v2.Standard.Digest.String() {
			t.Errorf("pull killed %s: hydrate after the re-run: %s", p.what, got)
		}
	}
	if kills < 3 {
		t.Errorf("only %d pulls were killed before they ended", kills)
	}
}
