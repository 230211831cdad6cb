package integration

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/blockfile/blockfile/integration/harness"
)

// TestBuildxRemoteDriver: `docker buildx build` through a builder created
// with `--driver remote` on the harness's buildkitd builds a Dockerfile (FROM
// the local registry's base, COPY and RUN) into an OCI layout.
func TestBuildxRemoteDriver(t *testing.T) {
	harness.RequireIntegration(t)
	env := harness.Get(t)
	docker, dockerEnv := env.Buildx(t)
	base := env.BaseImage(t)

	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Dockerfile"), "FROM "+base+"\n"+
		"COPY app.txt /app/app.txt\n"+
		"RUN echo built-by-buildx > /app/built.txt\n")
	writeFile(t, filepath.Join(src, "app.txt"), "app v1\n")
	out := filepath.Join(t.TempDir(), "layout")

	cmd := exec.Command(docker, "buildx", "build", "--progress=plain",
		"--output", "type=oci,dest="+out+",tar=false", src)
	cmd.Env = dockerEnv
	run(t, cmd)

	files := layoutFiles(t, out)
	for path, want := range map[string]string{
		"app/app.txt":   "app v1\n",
		"app/built.txt": "built-by-buildx\n",
	} {
		if got := files[path]; got != want {
			t.Errorf("%s in the buildx-built image = %q, want %q", path, got, want)
		}
	}
	if _, ok := files["bin/busybox"]; !ok {
		t.Errorf("bin/busybox missing: the image does not start from the base %s", base)
	}
}
