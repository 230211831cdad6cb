// Command setxattr sets one extended attribute on files, without following
// symlinks: `setxattr NAME VALUE PATH...`. A VALUE starting with 0x is hex
// (for binary values such as security.capability), as with setfattr(1).
//
// The busybox base image of the integration tests has no setfattr, so the
// xattr tests build this program statically (CGO_ENABLED=0), copy it into
// the build context and call it from a Dockerfile RUN, so that the xattrs
// are written inside the real buildkitd's containers.
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: setxattr NAME VALUE PATH...")
		os.Exit(2)
	}
	name, value := os.Args[1], []byte(os.Args[2])
	if h, ok := strings.CutPrefix(os.Args[2], "0x"); ok {
		b, err := hex.DecodeString(h)
		if err != nil {
			fmt.Fprintf(os.Stderr, "setxattr: value %q: %v\n", os.Args[2], err)
			os.Exit(2)
		}
		value = b
	}
	failed := false
	for _, p := range os.Args[3:] {
		if err := unix.Lsetxattr(p, name, value, 0); err != nil {
			fmt.Fprintf(os.Stderr, "setxattr %s on %s: %v\n", name, p, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
