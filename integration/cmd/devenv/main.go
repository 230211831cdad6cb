// Command devenv starts the integration harness's components (buildkitd, a
// registry and, on request, containerd, docker buildx and the example base
// image) with the same code the integration tests use, for scripts such as
// scripts/demo.sh and for trying things by hand.
//
//	devenv [flags] -- COMMAND [ARG...]
//	    runs COMMAND with the environment below, then stops everything and
//	    exits with COMMAND's status.
//	devenv [flags]
//	    prints the environment as shell exports (and writes -env-file), then
//	    runs until SIGINT or SIGTERM.
//
// Environment: BUILDKIT_HOST (buildctl reads it), BUILDCTL, BLOCKFILE_REGISTRY
// (127.0.0.1:<port>), BLOCKFILE_BASE (with -base), CONTAINERD_ADDRESS and
// CONTAINERD_NAMESPACE (ctr reads them; with -containerd), DOCKER,
// DOCKER_CONFIG, DOCKER_HOST, BUILDX_BUILDER (with -buildx),
// BLOCKFILE_DEVENV_DIR. PATH gets the directory of buildctl.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/blockfile/blockfile/integration/harness"
)

func main() {
	os.Exit(run())
}

func run() int {
	dir := flag.String("dir", "", "state directory (default: a new temp directory, removed at exit)")
	envFile := flag.String("env-file", "", "also write the environment as shell exports to this file")
	withBase := flag.Bool("base", false, "build examples/base and push it to the registry (BLOCKFILE_BASE)")
	withContainerd := flag.Bool("containerd", false, "start containerd (CONTAINERD_ADDRESS)")
	withBuildx := flag.Bool("buildx", false, "set up docker buildx with a remote builder (DOCKER, DOCKER_CONFIG)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: devenv [flags] [-- COMMAND [ARG...]]\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	env, err := harness.New(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
		return 1
	}
	code := serve(ctx, env, *envFile, *withBase, *withContainerd, *withBuildx, flag.Args())
	if err := env.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
		code = max(code, 1)
	}
	if code != 0 {
		env.WriteLogs(os.Stderr)
	}
	if *dir == "" {
		if err := env.RemoveDir(); err != nil {
			fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
		}
	}
	return code
}

func serve(ctx context.Context, env *harness.Env, envFile string, withBase, withContainerd, withBuildx bool, command []string) int {
	vars, err := start(ctx, env, withBase, withContainerd, withBuildx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
		return 1
	}
	exports := exportLines(vars)
	if envFile != "" {
		if err := writeAtomic(envFile, exports); err != nil {
			fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
			return 1
		}
	}
	if len(command) == 0 {
		fmt.Print(exports)
		fmt.Fprintln(os.Stderr, "devenv: running; stop with ^C or SIGTERM")
		<-ctx.Done()
		return 0
	}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = os.Environ()
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() > 0 {
			return exit.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "devenv: %s: %v\n", command[0], err)
		return 1
	}
	return 0
}

// start starts the requested components and returns the environment that
// points at them.
func start(ctx context.Context, env *harness.Env, withBase, withContainerd, withBuildx bool) (map[string]string, error) {
	vars := map[string]string{"BLOCKFILE_DEVENV_DIR": env.Dir}
	addr, err := env.StartBuildkitd(ctx)
	if err != nil {
		return nil, fmt.Errorf("buildkitd: %w", err)
	}
	vars["BUILDKIT_HOST"] = addr
	buildctl, err := env.Tool(ctx, "buildctl")
	if err != nil {
		return nil, err
	}
	vars["BUILDCTL"] = buildctl
	vars["PATH"] = filepath.Dir(buildctl) + ":" + os.Getenv("PATH")
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	vars["BLOCKFILE_REGISTRY"] = reg
	if withBase {
		base, err := env.BuildBaseImage(ctx)
		if err != nil {
			return nil, fmt.Errorf("base image: %w", err)
		}
		vars["BLOCKFILE_BASE"] = base
	}
	if withContainerd {
		sock, err := env.StartContainerd(ctx)
		if err != nil {
			return nil, fmt.Errorf("containerd: %w", err)
		}
		vars["CONTAINERD_ADDRESS"] = sock
		vars["CONTAINERD_NAMESPACE"] = harness.CtrNamespace
	}
	if withBuildx {
		docker, denv, err := env.SetupBuildx(ctx)
		if err != nil {
			return nil, fmt.Errorf("buildx: %w", err)
		}
		vars["DOCKER"] = docker
		for _, kv := range denv {
			k, v, _ := strings.Cut(kv, "=")
			if strings.HasPrefix(k, "DOCKER_") || strings.HasPrefix(k, "BUILDX_") {
				vars[k] = v
			}
		}
	}
	return vars, nil
}

func exportLines(vars map[string]string) string {
	var keys []string
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(vars[k], "'", `'\''`))
	}
	return b.String()
}

// writeAtomic writes data to path through a temp file and a rename, so a
// script polling for path never reads it half-written.
func writeAtomic(path, data string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
