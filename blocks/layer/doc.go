// Package layer splits one image layer into its block-framed standard form, its
// blocked form (block data replaced by .import. stubs) and block members, and
// hydrates a blocked layer back into the exact standard layer.
package layer
