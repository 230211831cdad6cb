// Package integration holds the tests that run against real components:
// buildkitd, a distribution registry, containerd and docker buildx, started
// by integration/harness. They are skipped under `go test -short` only.
package integration

import (
	"os"
	"testing"

	"github.com/blockfile/blockfile/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
