package llbgen

import (
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/opencontainers/go-digest"
)

// StorePath is the path of block d inside a blockfile store (an OCI image
// layout whose blobs are the raw blocks).
func StorePath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

// StorePatterns are the include patterns that transfer only the given
// blocks of a store, never the whole store.
func StorePatterns(ds []digest.Digest) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, StorePath(d))
	}
	return out
}

// Store is a block source reading a store directory that has been made
// available as one state (llb.Local with StorePatterns, or a named context).
// BuildKit does not hash local files: the frontend verifies each block it
// reads from a Store before use.
type Store struct{ State llb.State }

// Block implements BlockSource.
func (s Store) Block(d digest.Digest) (llb.State, string) { return s.State, "/" + StorePath(d) }

// Registry is a block source fetching each block as a blob of a registry
// repository ("host/repo") with llb.ImageBlob; BuildKit checks the digest.
type Registry struct {
	Repo        string
	Constraints []llb.ConstraintsOpt
}

// Block implements BlockSource.
func (r Registry) Block(d digest.Digest) (llb.State, string) {
	opts := []llb.ImageBlobOption{llb.Filename("block")}
	for _, c := range r.Constraints {
		opts = append(opts, c)
	}
	return llb.ImageBlob(r.Repo+"@"+d.String(), opts...), "/block"
}

// HTTP is a block source fetching each block from <BaseURL>/<algorithm>/<hex>
// (e.g. https://host/blocks/sha256/<hex>: a store's blobs folder served as
// is) with llb.HTTP and llb.Checksum; BuildKit checks the digest.
type HTTP struct {
	BaseURL     string
	Constraints []llb.ConstraintsOpt
}

// URL returns the address of block d.
func (h HTTP) URL(d digest.Digest) string {
	return strings.TrimSuffix(h.BaseURL, "/") + "/" + d.Algorithm().String() + "/" + d.Encoded()
}

// Block implements BlockSource.
func (h HTTP) Block(d digest.Digest) (llb.State, string) {
	opts := []llb.HTTPOption{llb.Checksum(d), llb.Filename("block")}
	for _, c := range h.Constraints {
		opts = append(opts, c)
	}
	return llb.HTTP(h.URL(d), opts...), "/block"
}

// OCIStore is a block source reading blocks from an OCI layout content
// store attached to the build session (client.SolveOpt.OCIStores, `buildctl
// --oci-layout ID=DIR`): a blockfile store is such a layout. BuildKit checks
// each blob's digest while fetching it and caches it by digest, so a warm
// build neither transfers nor hashes the blocks again.
type OCIStore struct {
	StoreID     string
	SessionID   string
	Constraints []llb.ConstraintsOpt
}

// Block implements BlockSource.
func (o OCIStore) Block(d digest.Digest) (llb.State, string) {
	opts := []llb.ImageBlobOption{llb.Filename("block"), llb.ImageBlobOCIStore(o.SessionID, o.StoreID)}
	for _, c := range o.Constraints {
		opts = append(opts, c)
	}
	return llb.OCILayoutBlob("blocks@"+d.String(), opts...), "/block"
}
