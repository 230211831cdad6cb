package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestSetupScript: scripts/setup.sh (run by make demo, make test and
// .ci/run) installs nothing and exits 0 when every package is there; not as
// root with a package missing, it prints the exact apt-get command and exits 2.
func TestSetupScript(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root, to run the script as another user")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "scripts", "setup.sh")
	runAs := func(uid uint32, args ...string) (string, int) {
		cmd := exec.Command("bash", append([]string{script}, args...)...)
		cmd.Dir = os.TempDir()
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), 0
	}
	// This machine ran it already: the full list is installed, so even a
	// user that cannot install anything passes.
	if out, code := runAs(65534); code != 0 || out != "" {
		t.Errorf("all installed: exit %d, output %q; want 0 and nothing", code, out)
	}
	out, code := runAs(65534, "runc", "blockfile-no-such-package")
	want := "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends blockfile-no-such-package"
	if code != 2 || !strings.Contains(out, want) {
		t.Errorf("missing, not root: exit %d, output %q; want 2 and %q", code, out, want)
	}
}
