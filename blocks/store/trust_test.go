package store

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestPresenceTrustsVerifiedRecords: a new Store (a new process) trusts a
// large blob whose file has not changed since it was verified, and the
// extents of a host whose file and extents record have not, without reading
// them (blockfile/verified): bytes changed under an unchanged identity (what
// only a disk error does; simulated by writing the record again for the new
// identity) still count as present, and Verify finds them and drops the
// record, after which they are absent. A file rewritten in place, or an
// extents record touched, is hashed again.
func TestPresenceTrustsVerifiedRecords(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	reopen := func() *Store {
		t.Helper()
		s2, err := Open(s.Root())
		if err != nil {
			t.Fatal(err)
		}
		return s2
	}
	present := func(st *Store, d digest.Digest, want bool, why string) {
		t.Helper()
		if ok, err := st.Exists(ctx, d); ok != want || err != nil {
			t.Fatalf("%s: Exists = %v, %v; want %v", why, ok, err, want)
		}
	}

	big := bytes.Repeat([]byte("0123456789abcdef"), trustRecordMin/16+1)
	desc := descOf("x", big)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(big)
	if _, err := w.Commit(ctx, desc.MediaType); err != nil {
		t.Fatal(err)
	}
	p := s.BlobPath(desc.Digest)
	present(reopen(), desc.Digest, true, "committed")
	corrupt(t, p)
	present(reopen(), desc.Digest, false, "rewritten in place (another identity)")
	k, ok, err := statKey(p)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	s.writeVerified(verifiedRecord{Digest: desc.Digest, File: k})
	present(reopen(), desc.Digest, true, "wrong bytes under a trusted identity (not read)")
	v := reopen()
	present(v, desc.Digest, true, "wrong bytes under a trusted identity (not read), before Verify")
	if err := v.Verify(ctx, nil); err == nil {
		t.Fatal("Verify found nothing wrong")
	}
	present(v, desc.Digest, false, "after Verify, in its process")
	present(reopen(), desc.Digest, false, "after Verify dropped the record")

	host, a, _, _ := hostWithExtents(t, s)
	hp := s.BlobPath(host.Digest)
	present(reopen(), a.Digest, true, "extent, host committed")
	r, ok := s.verifiedOnDisk(host.Digest, mustKey(t, hp))
	if !ok || r.Extents == nil {
		t.Fatalf("host record %+v, %v: want its extents stamped", r, ok)
	}
	corrupt(t, hp) // byte 0: inside extent a
	present(reopen(), a.Digest, false, "extent, host rewritten in place")
	r.File = mustKey(t, hp)
	s.writeVerified(r)
	present(reopen(), a.Digest, true, "extent, wrong bytes under trusted identities (not read)")
	now := time.Now()
	if err := os.Chtimes(s.extentRecordPath(host.Digest), now, now); err != nil {
		t.Fatal(err)
	}
	present(reopen(), a.Digest, false, "extent, its record touched")
}

func mustKey(t *testing.T, p string) fileKey {
	t.Helper()
	k, ok, err := statKey(p)
	if err != nil || !ok {
		t.Fatalf("%s: %v, %v", p, ok, err)
	}
	return k
}
