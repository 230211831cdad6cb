package store

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/internal/fsutil"
)

// gzipMember is a block member of raw as docs/FORMAT.md section 4 has it:
// one gzip member of raw plus zero padding to 512.
func gzipMember(t *testing.T, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(raw)
	zw.Write(make([]byte, (512-len(raw)%512)%512))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// corrupt flips one byte of the blob file in place (same size), as bit rot
// or a careless `dd conv=notrunc` would.
func corrupt(t *testing.T, p string) {
	t.Helper()
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, 0)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
}

// A blob of the right size whose bytes do not hash to its name is not
// present, and a Push of the good content repairs it (it used to answer
// "already present" and keep the damage). Once trusted, a blob damaged
// afterwards is noticed again (the trust is keyed by file identity).
func TestPushRepairsCorruptBlob(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := bytes.Repeat([]byte("block data "), 1000)
	d := push(t, s, blocks.MediaTypeBlock, data)
	if ok, err := s.Exists(ctx, d.Digest); !ok || err != nil {
		t.Fatalf("Exists of a good blob = %v, %v", ok, err)
	}
	corrupt(t, s.BlobPath(d.Digest))
	if ok, err := s.Exists(ctx, d.Digest); ok || err != nil {
		t.Fatalf("Exists of a same-size corrupt blob (trusted before) = %v, %v; want false", ok, err)
	}
	// A fresh Store (another process) has no trust yet: it hashes.
	s2, err := Open(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s2.Exists(ctx, d.Digest); ok || err != nil {
		t.Fatalf("Exists of a same-size corrupt blob (new process) = %v, %v; want false", ok, err)
	}
	if err := s2.Push(ctx, d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.BlobPath(d.Digest))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after Push of the good copy the blob is still damaged (%v)", err)
	}
	if err := s2.Verify(ctx, nil); err != nil {
		t.Fatalf("verify after repair: %v", err)
	}
	// The same holds for PushVerified / WriteVerified (hydrate's path).
	corrupt(t, s.BlobPath(d.Digest))
	if err := s2.PushVerified(ctx, d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(s.BlobPath(d.Digest)); !bytes.Equal(got, data) {
		t.Fatal("PushVerified kept a corrupt blob")
	}
}

// A member record that names a member of another block (the review's case:
// every export of the block then failed while verify said ok) is reported
// by verify, not returned by LookupMember, removed, and rebuilt by the
// next RecordMember.
func TestWrongMemberRecord(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	rawA, rawB := []byte("block A"), []byte("block B")
	dA, dB := descOf(blocks.MediaTypeBlock, rawA), descOf(blocks.MediaTypeBlock, rawB)
	mA := push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, rawA))
	mB := push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, rawB))
	if err := s.RecordMember(ctx, dA.Digest, blocks.Gzip, mA); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.LookupMember(ctx, dA.Digest, blocks.Gzip); !ok || err != nil || got.Digest != mA.Digest {
		t.Fatalf("Lookup of a good record = %v, %v, %v", got.Digest, ok, err)
	}
	// The record of A now names B's member.
	if err := s.RecordMember(ctx, dA.Digest, blocks.Gzip, mB); err != nil {
		t.Fatal(err)
	}
	var problems []Problem
	if err := s.Verify(ctx, func(p Problem) { problems = append(problems, p) }); err == nil || len(problems) != 1 || problems[0].Kind != ProblemBadRecord {
		t.Fatalf("verify with a wrong member record = %v, %v; want one %s", err, problems, ProblemBadRecord)
	}
	s2, _ := Open(s.Root()) // no memory of earlier checks
	if got, ok, err := s2.LookupMember(ctx, dA.Digest, blocks.Gzip); ok || err != nil {
		t.Fatalf("Lookup of a record naming another block's member = %v, %v, %v; want not found", got.Digest, ok, err)
	}
	if _, err := os.Stat(s.path("blockfile/members/gzip/" + dA.Digest.Encoded())); !os.IsNotExist(err) {
		t.Fatalf("the wrong record was kept (%v)", err)
	}
	if err := s2.RecordMember(ctx, dA.Digest, blocks.Gzip, mA); err != nil {
		t.Fatal(err)
	}
	if got, ok, _ := s2.LookupMember(ctx, dA.Digest, blocks.Gzip); !ok || got.Digest != mA.Digest {
		t.Fatal("the record was not rebuilt")
	}
	if err := s2.Verify(ctx, nil); err != nil {
		t.Fatalf("verify after the record was rebuilt: %v", err)
	}
	_ = dB
}

// CheckMember finds the raw size itself: a block whose size is a multiple
// of 512, one ending in zero bytes, and one of a single byte.
func TestCheckMemberSizes(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	for _, raw := range [][]byte{
		bytes.Repeat([]byte{7}, 1024),
		append(bytes.Repeat([]byte{7}, 700), 0, 0, 0),
		{1},
		append([]byte{9}, make([]byte, 511)...),
	} {
		m := push(t, s, blocks.MediaTypeMemberGzip, gzipMember(t, raw))
		if err := s.CheckMember(ctx, descOf(blocks.MediaTypeBlock, raw).Digest, blocks.Gzip, m); err != nil {
			t.Errorf("member of a %d-byte block: %v", len(raw), err)
		}
		other := append(bytes.Clone(raw), 1)
		if err := s.CheckMember(ctx, descOf(blocks.MediaTypeBlock, other).Digest, blocks.Gzip, m); err == nil {
			t.Errorf("member of a %d-byte block accepted for another block", len(raw))
		}
	}
}

// Temp and spool files of a killed process are removed by the next writer
// (its first lease), those of a running process are kept, whatever their age.
func TestLeaseSweepsDeadWritersTempFiles(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	dead := deadPid(t)
	live := os.Getppid() // the go tool: running
	old := time.Now().Add(-2 * fsutil.DeadOwnerAge)
	mk := func(kind string, pid int, mod time.Time) string {
		name := fmt.Sprintf("%s.%s.%d.123456", kind, hostTagOf(t, s), pid)
		p := filepath.Join(s.TempDir(), name)
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mod, mod)
		return p
	}
	deadSpool, deadBlob := mk("spool", dead, old), mk("blob", dead, old)
	liveSpool := mk("spool", live, time.Now().Add(-48*time.Hour))
	release, err := s.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	for _, p := range []string{deadSpool, deadBlob} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("temp file of dead pid %d survived the next writer: %s", dead, p)
		}
	}
	if _, err := os.Stat(liveSpool); err != nil {
		t.Errorf("temp file of running pid %d was removed: %v", live, err)
	}
}

// hostTagOf is the host part of this process's temp names.
func hostTagOf(t *testing.T, s *Store) string {
	t.Helper()
	f, err := os.CreateTemp(s.TempDir(), TempPattern("probe"))
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	f.Close()
	h, pid, ok := fsutil.Owner(filepath.Base(f.Name()))
	if !ok || pid != os.Getpid() {
		t.Fatalf("TempPattern name %s: owner not parsed", f.Name())
	}
	return h
}

// deadPid returns the pid of a process that ran and exited.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", "exit 0")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if fsutil.Alive(pid) {
		t.Fatalf("pid %d still runs", pid)
	}
	return pid
}
