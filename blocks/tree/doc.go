// Package tree defines tree blocks: the canonical document of a folder imported as
// one block, listing relative paths, modes, symlink targets and the file blocks.
package tree
