package serve

import (
	"context"
	"errors"
)

// Upstream fills the store with an image it lacks. Serve calls it when a
// client asks for a repository, tag or digest the store does not hold:
// the implementation resolves ref at the registry (the one the client
// asked for, from containerd's ?ns=, or a fixed one), brings it into the
// store (the blocked form and only the blocks the store lacks when the
// upstream has a blocked form, else the standard image) and tags it;
// serve then answers from the store. Implementations must leave nothing
// unverified in the store on failure.
type Upstream interface {
	// Fill brings registry/repository:reference (reference a tag or a
	// digest; registry "" when the client named none) into the store and
	// returns the store name it is tagged under.
	Fill(ctx context.Context, registry, repository, reference string) (storeName string, err error)
}

// ErrNoUpstreamPull is returned by NotYetUpstream: this build has no
// registry pull to fill the store with.
var ErrNoUpstreamPull = errors.New("upstream fill is not available yet: blockfile pull (blocks/registry) is not in this build")

// NotYetUpstream is the Upstream of a build without registry pull.
type NotYetUpstream struct{}

// Fill always fails with ErrNoUpstreamPull.
func (NotYetUpstream) Fill(context.Context, string, string, string) (string, error) {
	return "", ErrNoUpstreamPull
}
