// Package store is the Blockfile store: an OCI image layout with verified, atomic,
// idempotent blob writes that several processes may share, tags in index.json, and
// the index from raw blocks to their compressed members.
package store
