// Package store is the Blockfile store: an OCI image layout with verified, atomic,
// idempotent blob writes that several processes may share, tags in index.json, and
// the index from raw blocks to their compressed members.
//
// Layout of a store root:
//
//	oci-layout, index.json, blobs/sha256/<hex>   a plain OCI image layout; a raw
//	                                              block's blob file is the block's bytes
//	blockfile/ingest/                             temp files (same filesystem, so rename is atomic)
//	blockfile/members/<gzip|zstd>/<raw hex>       member index: the member descriptor JSON
//	blockfile/blocks/<hex>                        blocks added by `block add`: gc roots
//	blockfile/index.lock                          flock around index.json updates and gc
//
// Every write is temp file + hash while writing + size/digest check + fsync +
// chmod 0444 + rename; a blob that is already there is not an error, so two
// processes pushing the same blocks both succeed. Every read (Fetch, GetJSON,
// VerifyReader) checks size and digest while streaming and fails naming the
// digest and file. The exceptions are OpenUnverified, PushVerified and
// WriteVerified, which check sizes only: they are for callers that check a
// digest covering the same bytes themselves (hydrate checks the whole
// standard layer it rebuilds), so that each byte is hashed once.
package store
