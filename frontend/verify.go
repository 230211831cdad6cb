package frontend

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/moby/buildkit/client/llb"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/llbgen"
)

// VerifyCommand is the first argument that makes the frontend binary verify
// blocks instead of serving the gateway API: `blockfile-frontend
// verify-blocks DIR DIGEST...` hashes DIR/blobs/<alg>/<hex> for each digest.
//
// When the frontend runs as an image, it verifies a local block store by
// running itself in a container over the store (an ExecOp). BuildKit caches
// that step by the content of the store's blobs, so a warm build does not
// read the blocks again, and a changed or tampered blob runs it again.
const VerifyCommand = "verify-blocks"

// VerifyMain runs the verify command; it returns the process exit code.
func VerifyMain(args []string, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprintf(stderr, "usage: %s DIR DIGEST...\n", VerifyCommand)
		return 2
	}
	dir := args[0]
	failed := false
	for _, a := range args[1:] {
		d, err := digest.Parse(a)
		if err == nil {
			err = verifyFile(filepath.Join(dir, filepath.FromSlash(llbgen.StorePath(d))), d)
		}
		if err != nil {
			fmt.Fprintf(stderr, "block %s: %v\n", a, err)
			failed = true
		}
	}
	if failed {
		return 1
	}
	return 0
}

func verifyFile(p string, d digest.Digest) error {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("not found in the block store (%s)", llbgen.StorePath(d))
	}
	if err != nil {
		return err
	}
	defer f.Close()
	v := d.Algorithm().Digester()
	if _, err := io.Copy(v.Hash(), f); err != nil {
		return fmt.Errorf("read %s: %w", llbgen.StorePath(d), err)
	}
	if got := v.Digest(); got != d {
		return fmt.Errorf("content does not match its digest (the bytes at %s hash to %s)", llbgen.StorePath(d), got)
	}
	return nil
}

// verifyStep returns a build step that runs the frontend image (source) to
// verify the blocks ds of the store state st; its output is empty. The
// store is mounted read-only: a read-write mount of a local source made
// BuildKit send the whole store again on the next build.
func verifyStep(source string, st llb.State, ds []digest.Digest) llb.State {
	args := []string{"/bin/blockfile-frontend", VerifyCommand, "/blocks"}
	for _, d := range ds {
		args = append(args, d.String())
	}
	run := llb.Image(source).Run(
		llb.Args(args),
		llb.Network(llb.NetModeNone),
		llb.WithCustomName(fmt.Sprintf("[blocks] verify %d block(s)", len(ds))),
	)
	run.AddMount("/blocks", st, llb.Readonly)
	return run.AddMount("/out", llb.Scratch())
}
