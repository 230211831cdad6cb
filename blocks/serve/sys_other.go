//go:build !unix

package serve

import "os"

// layoutFileBudget is how many files the layouts of live jobs may hold open.
func layoutFileBudget() int { return 1024 }

// unlinked reports whether the file has no name left; unknown here.
func unlinked(os.FileInfo) bool { return false }
