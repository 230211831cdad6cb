// Package deflate is the deflate compressor of Go 1.26.8's compress/flate
// (deflate.go, deflatefast.go, huffman_bit_writer.go, huffman_code.go and
// token.go; LICENSE is Go's), frozen: Go 1.26.8's algorithm, with speedups
// that do not change a single output byte.
//
// Blockfile's gzip members must come out the same from the same bytes
// whatever Go release builds blockfile: export reuses members by content,
// and a bundle may ship a changed member of a blocked layer uncompressed for
// the site to deflate again (layer.GzipMember), checked against the layer's
// digest. The standard library promises a valid deflate stream, not the
// same one in every release; this copy does not change its output unless
// blockfile's format says so (docs/FORMAT.md, "Normal compression").
//
// The speedups, each marked "Blockfile:" with the reason it cannot change
// the output: findMatch rejects hopeless candidates with one 64-bit compare
// and walks hash chains two links per dependent load (hashPrev2, kept up by
// link; hashPrev's slots are indexed by stored position) in a small loop
// (scanChain); matchLen compares 8 bytes at a time; writeTokens keeps the
// bit writer's state in registers and indexTokens its tables in locals;
// Huffman lists are sorted with slices.SortFunc. Everything else is Go's
// code but for the package name.
//
// How the output is checked: reference_test.go compares it byte for byte
// with the standard library's compress/flate, the same algorithm while
// go.mod pins Go 1.26 (the tests fail, not skip, with another Go), at every
// level, over random, zero, text, generated, executable, library and tar
// inputs of many sizes, with flushes, Reset and dictionaries, and in
// FuzzSameAsReference; golden_test.go pins sha256 digests of outputs that
// were computed with the unmodified copy, so the pin holds with any Go.
package deflate
