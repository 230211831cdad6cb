package tree

import (
	"bytes"
	"testing"
)

// FuzzParse: Parse never panics, and whatever it accepts is valid and
// re-encodes to exactly the input (one folder, one document).
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"blockfile.tree":1,"entries":[]}` + "\n"))
	f.Add([]byte(`{"blockfile.tree":1,"entries":[{"path":"a","type":"dir","mode":"0755"},{"path":"a/b","type":"file","mode":"0644","size":1,"digest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"},{"path":"a/c","type":"symlink","mode":"0777","target":"b"}]}` + "\n"))
	f.Add([]byte(`{"blockfile.tree":1,"entries":[{"path":"../x","type":"dir","mode":"0755"}]}` + "\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		tr, err := Parse(bytes.NewReader(doc), 1<<20)
		if err != nil {
			return
		}
		if err := tr.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid tree: %v", err)
		}
		again, err := tr.Encode()
		if err != nil || !bytes.Equal(again, doc) {
			t.Fatalf("accepted document does not re-encode to itself:\n%q\n%q", doc, again)
		}
	})
}
