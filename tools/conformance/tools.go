//go:build tools

// Package tools pins the OCI distribution-spec conformance suite that
// integration/harness builds to test blockfile serve (its pull section, in
// read-only mode). A module of its own, so the suite's dependencies never
// constrain the product's go.mod.
package tools

import (
	_ "github.com/opencontainers/distribution-spec/conformance"
)
