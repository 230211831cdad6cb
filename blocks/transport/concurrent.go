package transport

// ConcurrentPusher is implemented by sinks whose Push and Exists may be
// called from several goroutines at once, each call for a different blob:
// image hydrate then writes several layers at a time. A sink without it
// (an oci-archive: is one tar stream) gets one Push at a time.
type ConcurrentPusher interface {
	ConcurrentPush() bool
}

// PushesConcurrently reports whether dst takes concurrent Push calls.
func PushesConcurrently(dst Sink) bool {
	c, ok := dst.(ConcurrentPusher)
	return ok && c.ConcurrentPush()
}

// ConcurrentPush: each blob is its own temp file and rename; the list of
// blobs added to an existing layout is guarded by a mutex.
func (s *layoutSink) ConcurrentPush() bool { return true }
