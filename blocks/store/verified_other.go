//go:build !linux

package store

import (
	"fmt"
	"os"
)

// statKey: without inode and change time, blobs are always hashed.
func statKey(p string) (fileKey, bool, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return fileKey{}, false, err
	}
	if !fi.Mode().IsRegular() {
		return fileKey{}, false, fmt.Errorf("%s: not a regular file", p)
	}
	return fileKey{}, false, nil
}
