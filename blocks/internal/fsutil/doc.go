// Package fsutil is how blockfile puts files on disk: one committer for
// every blob and file it writes (the store, the oci: and oci-archive: sinks),
// the sync strategy of each OS, the names of temp files (which say which
// process owns them, so the next writer can remove what a killed one left),
// and file identities for caches of verified content.
//
// The commit of a file is always: write to a temp file in the destination's
// directory (or, for the store, in its ingest directory on the same file
// system), check its size and digest, make it durable (fsync, or one syncfs
// for a batch), make it read-only, rename it into place, and fsync the
// directory so the rename survives a crash too. Nothing is ever visible
// under its final name before its bytes are complete and verified.
package fsutil
