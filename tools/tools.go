//go:build tools

// Package tools pins the versions of the docker CLI and the buildx plugin
// that integration/harness builds for `docker buildx build` tests. It is a
// separate module so these dependencies never constrain the product's go.mod.
package tools

import (
	_ "github.com/docker/buildx/cmd/buildx"
	_ "github.com/docker/cli/cmd/docker"
)
