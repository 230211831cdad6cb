//go:build tools

// Package cosign pins the version of sigstore's cosign that the integration
// tests build to sign images and verify signatures after a bundle round trip.
// It is a module of its own because cosign's dependency tree is large and
// must never constrain the product's go.mod or the docker/buildx tools module.
package cosign

import (
	_ "github.com/sigstore/cosign/v2/cmd/cosign"
)
