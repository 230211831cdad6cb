// Package llbgen lowers parsed IMPORT instructions to LLB: pure functions from
// instructions to llb.States and image metadata, with no gateway client.
//
// ImportState turns one run of imports into one FileOp on scratch holding exactly
// the imported files (and the folders leading to them) with fixed modes, owners
// and times. A BlockSource says where a block's bytes are: Store (a store
// directory made available as a state, e.g. llb.Local with StorePatterns),
// Registry (llb.ImageBlob), HTTP (llb.HTTP with a checksum) or OCIStore
// (llb.OCILayoutBlob from a session OCI store). MergeLabel computes the
// blocks.LabelImports label.
//
// Tests marshal the LLB and assert on the ops.
package llbgen
