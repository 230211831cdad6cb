// Package llbgen lowers parsed IMPORT instructions to LLB: pure functions from
// instructions to llb.States and image metadata, with no gateway client.
package llbgen
