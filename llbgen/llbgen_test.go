package llbgen

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/solver/pb"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks/tree"
)

func dgst(s string) digest.Digest { return digest.FromString(s) }

// ops marshals st and returns its ops (the terminal op dropped).
func ops(t *testing.T, st llb.State) []*pb.Op {
	t.Helper()
	def, err := st.Marshal(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.Op
	for _, dt := range def.Def[:len(def.Def)-1] {
		var op pb.Op
		if err := op.UnmarshalVT(dt); err != nil {
			t.Fatal(err)
		}
		out = append(out, &op)
	}
	return out
}

func fileOps(all []*pb.Op) []*pb.FileOp {
	var out []*pb.FileOp
	for _, op := range all {
		if f := op.GetFile(); f != nil {
			out = append(out, f)
		}
	}
	return out
}

func sources(all []*pb.Op) []*pb.SourceOp {
	var out []*pb.SourceOp
	for _, op := range all {
		if s := op.GetSource(); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func storeSource(ds []digest.Digest) Store {
	return Store{State: llb.Local("blocks", llb.SessionID("session"), llb.IncludePatterns(StorePatterns(ds)))}
}

func TestImportStateStoreRunIsOneFileOp(t *testing.T) {
	var imports []Import
	var ds []digest.Digest
	for i := range 150 {
		d := dgst(fmt.Sprint("jar", i))
		ds = append(ds, d)
		imports = append(imports, Import{Block: d, Dest: fmt.Sprintf("/app/libs/lib%03d.jar", i)})
	}
	mode := uint32(0o755)
	imports[3].Mode = &mode
	imports[4].Owner = &Owner{UID: 1000, GID: 1001}

	st, err := ImportState(imports, storeSource(ds), Options{})
	if err != nil {
		t.Fatal(err)
	}
	all := ops(t, st)
	fops := fileOps(all)
	if len(fops) != 1 {
		t.Fatalf("%d FileOps for a run of 150 imports, want 1", len(fops))
	}
	srcs := sources(all)
	if len(srcs) != 1 || srcs[0].Identifier != "local://blocks" {
		t.Fatalf("sources = %v, want one local://blocks", srcs)
	}
	if got := srcs[0].Attrs[pb.AttrIncludePatterns]; !strings.Contains(got, "blobs/sha256/"+ds[149].Encoded()) || strings.Count(got, "blobs/sha256/") != 150 {
		t.Errorf("include patterns %s: want the 150 blobs only", got)
	}

	var mkdirs []string
	copies := map[string]*pb.FileActionCopy{}
	var final *pb.FileActionCopy
	for _, a := range fops[0].Actions {
		switch {
		case a.GetMkdir() != nil:
			m := a.GetMkdir()
			mkdirs = append(mkdirs, m.Path)
			if m.Mode != 0o755 || m.Timestamp != 0 || m.Owner.User.GetByID() != 0 {
				t.Errorf("mkdir %s: mode %o time %d owner %v", m.Path, m.Mode, m.Timestamp, m.Owner)
			}
		case a.GetCopy() != nil && a.GetCopy().Src == "/" && a.GetCopy().Dest == "/":
			final = a.GetCopy()
		case a.GetCopy() != nil:
			copies[a.GetCopy().Dest] = a.GetCopy()
		}
	}
	if !slices.Equal(mkdirs, []string{"/app", "/app/libs"}) {
		t.Errorf("mkdirs = %v, want the parents, parents first", mkdirs)
	}
	if len(copies) != 150 {
		t.Fatalf("%d file copies, want 150", len(copies))
	}
	c := copies["/app/libs/lib000.jar"]
	if c.Src != "/blobs/sha256/"+ds[0].Encoded() || c.Mode != 0o644 || c.Timestamp != 0 || c.Owner.User.GetByID() != 0 || c.Owner.Group.GetByID() != 0 {
		t.Errorf("copy lib000 = %+v", c)
	}
	if c := copies["/app/libs/lib003.jar"]; c.Mode != 0o755 {
		t.Errorf("--chmod: mode %o, want 755", c.Mode)
	}
	if c := copies["/app/libs/lib004.jar"]; c.Owner.User.GetByID() != 1000 || c.Owner.Group.GetByID() != 1001 {
		t.Errorf("--chown: owner %v", c.Owner)
	}
	// The last action re-copies the staged tree with a fixed time, so that the
	// folders' mtimes are fixed after their files are placed.
	if final == nil || !final.DirCopyContents || final.Timestamp != 0 {
		t.Fatalf("final copy = %+v, want / -> / with timestamp 0", final)
	}
	last := fops[0].Actions[len(fops[0].Actions)-1]
	if last.GetCopy() != final || last.Input != -1 || last.Output != 0 {
		t.Errorf("final action: input %d output %d; want the op's only output, on scratch", last.Input, last.Output)
	}
}

func TestImportStateReproducible(t *testing.T) {
	imports := []Import{{Block: dgst("a"), Dest: "/x/a"}, {Block: dgst("b"), Dest: "/x/b"}}
	src := storeSource([]digest.Digest{dgst("a"), dgst("b")})
	digestOf := func(opt Options) digest.Digest {
		st, err := ImportState(imports, src, opt)
		if err != nil {
			t.Fatal(err)
		}
		def, err := st.Marshal(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return digest.FromBytes(def.Def[len(def.Def)-2])
	}
	if digestOf(Options{}) != digestOf(Options{}) {
		t.Error("same imports give different LLB")
	}
	sde := time.Unix(1700000000, 0)
	st, _ := ImportState(imports, src, Options{Time: sde})
	for _, a := range fileOps(ops(t, st))[0].Actions {
		ts := int64(-2)
		switch {
		case a.GetCopy() != nil:
			ts = a.GetCopy().Timestamp
		case a.GetMkdir() != nil:
			ts = a.GetMkdir().Timestamp
		}
		if ts != sde.UnixNano() {
			t.Errorf("action %v: timestamp %d, want SOURCE_DATE_EPOCH %d", a, ts, sde.UnixNano())
		}
	}
}

func TestImportStateRegistryAndHTTP(t *testing.T) {
	a, b := dgst("a"), dgst("b")
	imports := []Import{{Block: a, Dest: "/a"}, {Block: b, Dest: "/b"}}

	st, err := ImportState(imports, Registry{Repo: "127.0.0.1:5000/team/blocks"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range sources(ops(t, st)) {
		ids = append(ids, s.Identifier)
	}
	slices.Sort(ids)
	want := []string{"docker-image+blob://127.0.0.1:5000/team/blocks@" + a.String(), "docker-image+blob://127.0.0.1:5000/team/blocks@" + b.String()}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("registry sources = %v, want %v", ids, want)
	}

	st, err = ImportState(imports, OCIStore{StoreID: "blocks", SessionID: "s1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sources(ops(t, st)) {
		if !strings.HasPrefix(s.Identifier, "oci-layout+blob://") || !strings.HasSuffix(s.Identifier, "@"+a.String()) && !strings.HasSuffix(s.Identifier, "@"+b.String()) {
			t.Errorf("oci store source %s", s.Identifier)
		}
		if s.Attrs[pb.AttrOCILayoutStoreID] != "blocks" || s.Attrs[pb.AttrOCILayoutSessionID] != "s1" {
			t.Errorf("oci store source attrs %v", s.Attrs)
		}
	}

	st, err = ImportState(imports, HTTP{BaseURL: "https://blocks.example/store/blobs/"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	all := ops(t, st)
	for _, s := range sources(all) {
		d := digest.Digest(s.Attrs[pb.AttrHTTPChecksum])
		if d != a && d != b {
			t.Errorf("http source %s: checksum %q", s.Identifier, d)
		}
		if s.Identifier != "https://blocks.example/store/blobs/sha256/"+d.Encoded() {
			t.Errorf("http source %s: want <base>/sha256/<hex>", s.Identifier)
		}
	}
	if n := len(fileOps(all)); n != 1 {
		t.Errorf("%d FileOps, want 1", n)
	}
	for _, a := range fileOps(all)[0].Actions {
		if c := a.GetCopy(); c != nil && c.Src != "/" && c.Src != "/block" {
			t.Errorf("copy from %s, want /block", c.Src)
		}
	}
}

func TestImportStateTree(t *testing.T) {
	f1, f2 := dgst("java"), dgst("libjvm")
	tr := &tree.Tree{Version: 1, Entries: []tree.Entry{
		{Path: "bin", Type: tree.TypeDir, Mode: "0750"},
		{Path: "bin/java", Type: tree.TypeFile, Mode: "0755", Size: 4, Digest: f1},
		{Path: "bin/jre", Type: tree.TypeSymlink, Mode: "0777", Target: "java"},
		{Path: "lib", Type: tree.TypeDir, Mode: "0755"},
		{Path: "lib/libjvm.so", Type: tree.TypeFile, Mode: "4755", Size: 6, Digest: f2},
	}}
	imports := []Import{{Block: dgst("tree"), Dest: "/opt/jdk/", Tree: tr, Owner: &Owner{UID: 7, GID: 8}}}
	if got := Blocks(imports); !slices.Equal(got, []digest.Digest{f1, f2}) {
		t.Errorf("Blocks = %v, want the tree's file blocks", got)
	}
	st, err := ImportState(imports, storeSource(Blocks(imports)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fops := fileOps(ops(t, st))
	if len(fops) != 1 {
		t.Fatalf("%d FileOps, want 1", len(fops))
	}
	got := map[string]string{}
	for _, a := range fops[0].Actions {
		switch {
		case a.GetMkdir() != nil:
			m := a.GetMkdir()
			got[m.Path] = fmt.Sprintf("dir %04o %d", m.Mode, m.Owner.User.GetByID())
		case a.GetSymlink() != nil:
			s := a.GetSymlink()
			got[s.Newpath] = "symlink " + s.Oldpath
		case a.GetCopy() != nil && a.GetCopy().Dest != "/":
			c := a.GetCopy()
			got[c.Dest] = fmt.Sprintf("file %04o %d %s", c.Mode, c.Owner.User.GetByID(), c.Src)
		}
	}
	want := map[string]string{
		"/opt":                   "dir 0755 0",
		"/opt/jdk":               "dir 0755 7",
		"/opt/jdk/bin":           "dir 0750 7",
		"/opt/jdk/bin/java":      "file 0755 7 /blobs/sha256/" + f1.Encoded(),
		"/opt/jdk/bin/jre":       "symlink java",
		"/opt/jdk/lib":           "dir 0755 7",
		"/opt/jdk/lib/libjvm.so": "file 4755 7 /blobs/sha256/" + f2.Encoded(),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("actions %v, want %v", got, want)
	}
}

func TestImportStateConflicts(t *testing.T) {
	src := storeSource(nil)
	for _, tc := range []struct {
		name    string
		imports []Import
		want    string
	}{
		{"same path twice", []Import{{Block: dgst("a"), Dest: "/x"}, {Block: dgst("b"), Dest: "/x"}}, "placed twice"},
		{"file under a file", []Import{{Block: dgst("a"), Dest: "/x"}, {Block: dgst("b"), Dest: "/x/y"}}, "needs folder /x"},
		{"relative", []Import{{Block: dgst("a"), Dest: "x"}}, "not absolute"},
		{"file at root", []Import{{Block: dgst("a"), Dest: "/"}}, "file path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ImportState(tc.imports, src, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	// The same block at the same path twice is harmless.
	if _, err := ImportState([]Import{{Block: dgst("a"), Dest: "/x"}, {Block: dgst("a"), Dest: "/x"}}, src, Options{}); err != nil {
		t.Errorf("duplicate identical import: %v", err)
	}
}

func TestMergeLabel(t *testing.T) {
	tr := &tree.Tree{Version: 1, Entries: []tree.Entry{}}
	got, err := MergeLabel(`{"/base/a":"sha256:`+strings.Repeat("1", 64)+`","/app/a.jar":"old"}`, []Import{
		{Block: dgst("a"), Dest: "/app/a.jar"},
		{Block: dgst("t"), Dest: "/opt/jdk", Tree: tr},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"/app/a.jar":"` + dgst("a").String() + `","/base/a":"sha256:` + strings.Repeat("1", 64) + `","/opt/jdk/":"` + dgst("t").String() + `"}`
	if got != want {
		t.Errorf("label\n got %s\nwant %s", got, want)
	}
	if _, err := MergeLabel("not json", nil); err == nil {
		t.Error("a broken inherited label is accepted")
	}
}

func TestImportStateRequires(t *testing.T) {
	verify := llb.Image("example/verifier").Run(llb.Args([]string{"/verify"})).AddMount("/out", llb.Scratch())
	a := dgst("a")
	st, err := ImportState([]Import{{Block: a, Dest: "/x/a"}}, storeSource([]digest.Digest{a}), Options{Requires: []llb.State{verify}})
	if err != nil {
		t.Fatal(err)
	}
	all := ops(t, st)
	fops := fileOps(all)
	if len(fops) != 1 {
		t.Fatalf("%d FileOps, want 1", len(fops))
	}
	var staged, removed bool
	for _, a := range fops[0].Actions {
		if c := a.GetCopy(); c != nil && c.Dest == requiresDir+"/0" {
			staged = true
		}
		if r := a.GetRm(); r != nil && r.Path == requiresDir {
			removed = true
		}
	}
	if !staged || !removed {
		t.Errorf("required step staged %v, removed %v; want both", staged, removed)
	}
	hasExec := false
	for _, op := range all {
		if op.GetExec() != nil {
			hasExec = true
		}
	}
	if !hasExec {
		t.Error("the required step is not an input of the import")
	}
}
