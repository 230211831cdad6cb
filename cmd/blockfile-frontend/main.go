// Command blockfile-frontend is the Blockfile Dockerfile frontend as a BuildKit
// gateway image: users reference it with `# syntax=<image>`. All logic lives in
// package frontend.
//
// `blockfile-frontend verify-blocks DIR DIGEST...` is the block check that the
// frontend runs, in a build step, over a local block store (see
// frontend.VerifyCommand). `blockfile-frontend version` prints the build.
package main

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/gateway/grpcclient"
	"github.com/moby/buildkit/util/appcontext"
	_ "github.com/moby/buildkit/util/grpcutil/encoding/proto"

	"github.com/blockfile/blockfile/frontend"
	"github.com/blockfile/blockfile/internal/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == frontend.VerifyCommand {
		os.Exit(frontend.VerifyMain(os.Args[2:], os.Stderr))
	}
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		v := version.Get()
		fmt.Printf("blockfile-frontend %s (commit %s, format version %d, %s %s)\n", v.Version, v.Commit, v.FormatVersion, v.GoVersion, v.Platform)
		return
	}
	if err := grpcclient.RunFromEnvironment(appcontext.Context(), frontend.Build); err != nil {
		fmt.Fprintf(os.Stderr, "blockfile-frontend: %+v\n", err)
		os.Exit(1)
	}
}
