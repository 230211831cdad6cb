// Package layer splits one image layer into its block-framed standard form, its
// blocked form (block data replaced by .import. stubs) and block members, and
// hydrates a blocked layer back into the exact standard layer.
//
// The byte format is docs/FORMAT.md (format version 1). In short: the standard
// layer is the builder's uncompressed tar, byte for byte, compressed as a chain
// of gzip members (zstd frames). Each block file contributes two members of its
// own: its raw header records, encoded without compression in one fixed way
// (WriteHeaderMember), and its data plus padding, which depends only on the
// file's bytes and is stored once as a blob. The blocked layer replaces each such
// pair with a stub entry <dir>/.import.<base> whose content is blocks.StubMagic
// and the JSON of a blocks.Stub; consecutive stub entries share one stub member
// (up to 256 entries or 1 MiB), so that a stub costs little more than its
// digests. Everything else is shared verbatim, so Hydrate only splices members
// and copies bytes; it never re-compresses.
//
// Split and Hydrate stream: memory stays flat whatever the size of the layer.
// Hydrate trusts nothing in the blocked layer and checks its output against the
// wanted digest.
package layer
