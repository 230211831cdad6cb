package frontend

import (
	"context"

	"github.com/moby/buildkit/frontend/dockerfile/builder"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
)

// Build is the gateway BuildFunc of the Blockfile frontend.
func Build(ctx context.Context, c gwclient.Client) (*gwclient.Result, error) {
	return builder.Build(ctx, c)
}
