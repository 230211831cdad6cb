// Package deflate is the deflate compressor of Go 1.26.8's compress/flate
// (deflate.go, deflatefast.go, huffman_bit_writer.go, huffman_code.go and
// token.go, unchanged but for the package name; LICENSE is Go's), frozen.
//
// Blockfile's gzip members must come out the same from the same bytes
// whatever Go release builds blockfile: export reuses members by content,
// and a bundle may ship a changed member of a blocked layer uncompressed for
// the site to deflate again (layer.GzipMember), checked against the layer's
// digest. The standard library promises a valid deflate stream, not the
// same one in every release; this copy does not change unless blockfile's
// format says so (docs/FORMAT.md, "Normal compression").
package deflate
