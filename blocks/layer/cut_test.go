package layer

import (
	"bytes"
	stdgzip "compress/gzip"
	"fmt"
	"io"
	"strings"
	"testing"
)

// gzipMembers cuts a gzip stream into its members' compressed bytes.
func gzipMembers(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r := bytes.NewReader(b)
	var out [][]byte
	for r.Len() > 0 {
		start := r.Size() - int64(r.Len())
		zr, err := stdgzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		zr.Multistream(false)
		if _, err := io.Copy(io.Discard, zr); err != nil {
			t.Fatal(err)
		}
		out = append(out, b[start:r.Size()-int64(r.Len())])
	}
	return out
}

// docsTar is a run of 400 small text files (no block) in which version
// changes one file in the middle.
func docsTar(t *testing.T, version string) []byte {
	var es []entry
	for i := range 400 {
		var b strings.Builder
		for l := range 30 {
			fmt.Fprintf(&b, "doc %d line %d %s\n", i, l, strings.Repeat("x", (i+l)%13))
		}
		if i == 200 {
			b.WriteString("version " + version + "\n")
		}
		es = append(es, reg(fmt.Sprintf("usr/share/doc/p%03d/README", i), []byte(b.String())))
	}
	return makeTar(t, es...)
}

// TestVerbatimCutsFollowNames: a long run of small files is cut into
// members at entries chosen by name (FORMAT.md section 2), so changing one
// file changes only the member that holds it: every other member of the
// blocked layer is byte for byte the same in both versions.
func TestVerbatimCutsFollowNames(t *testing.T) {
	_, _, a, err := splitBytes(t, docsTar(t, "1"), SplitOptions{MinBlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, _, b, err := splitBytes(t, docsTar(t, "2"), SplitOptions{MinBlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ma, mb := gzipMembers(t, a), gzipMembers(t, b)
	if len(ma) < 8 {
		t.Fatalf("%d members for ~700 KB of small files: the run is not cut by names", len(ma))
	}
	if len(ma) != len(mb) {
		t.Fatalf("%d members before, %d after changing one file", len(ma), len(mb))
	}
	differ := 0
	for i := range ma {
		if !bytes.Equal(ma[i], mb[i]) {
			differ++
		}
	}
	if differ != 1 {
		t.Errorf("%d of %d members differ after changing one file, want 1", differ, len(ma))
	}
	t.Logf("%d members, %d bytes; %d differs", len(ma), len(a), differ)
}
