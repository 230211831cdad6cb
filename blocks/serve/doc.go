// Package serve is the site mirror: an HTTP handler speaking the pull side
// of the OCI distribution API (/v2/, manifests by tag and digest, blobs with
// HEAD and Range, tag lists) over a blockfile store, so that unchanged
// clients (containerd through a hosts.toml mirror entry, Docker's
// registry-mirrors, BuildKit FROM, skopeo) pull the standard images the
// store holds. A standard layer the store holds only in blocked form is
// hydrated on demand and streamed to the client while it is produced;
// concurrent requests for one layer share one hydration. Everything is read
// from the store on each request (index.json is re-read whenever it
// changes), so images a bundle apply adds are served at once.
//
// The handler is small and written to the spec rather than built on
// distribution's registry: distribution's storage driver interface is a
// path-addressed filesystem (it lists and walks _manifests/tags/... and
// links under repositories), which a content-addressed store with
// on-demand layers fits only through an emulation layer as large as this
// package, and which could not stream a layer while it is hydrated. See
// docs/SERVE.md.
package serve
