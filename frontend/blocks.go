package frontend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/solver/pb"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/status"

	"github.com/blockfile/blockfile/blocks/tree"
	"github.com/blockfile/blockfile/llbgen"
)

// Build arguments and the named context that select where blocks come from.
const (
	ArgRepo = "BLOCKFILE_REPO" // host/repo: blocks are blobs of this repository
	ArgURL  = "BLOCKFILE_URL"  // base URL: block d is at <url>/sha256/<hex>
	// ArgOCIStore names an OCI layout store attached to the session
	// (`buildctl --oci-layout ID=<store>`, client.SolveOpt.OCIStores) that
	// holds the blocks; `blockfile build` uses it.
	ArgOCIStore = "BLOCKFILE_OCI_STORE"
	ContextName = "blocks" // a store directory (--build-context / --local)
)

// treePrefix starts every tree document (see blocks/tree).
var treePrefix = []byte(`{"blockfile.tree":`)

// readChunk is how much one ReadFile call asks for; the gateway caps a
// message at 16 MiB.
const readChunk = 8 << 20

// ErrNoSource is returned when no block source was given.
var ErrNoSource = errors.New("no block source: pass --build-context blocks=<store> (buildx), --local blocks=<store> (buildctl), or --build-arg BLOCKFILE_REPO=host/repo or BLOCKFILE_URL=https://host/path")

// resolver finds, verifies and reads the blocks of the IMPORTs, and lowers
// each run to its state.
type resolver struct {
	c    gwclient.Client
	bc   *dockerui.Client
	opts map[string]string
	sm   *llb.SourceMap // the Dockerfile as the user wrote it
	df   *Dockerfile
	// requires are build steps every import state depends on (the
	// verification of local blocks).
	requires []llb.State
	// local verifies blocks of the local store in this process (see
	// BuildWithStore); nil when the frontend runs as an image.
	local BlockVerifier
}

// where returns the locations of the IMPORTs that name d.
func (r *resolver) where(d digest.Digest) [][]parser.Range {
	var out [][]parser.Range
	for _, run := range r.df.Runs {
		for _, in := range run.Imports {
			if in.Block == d {
				out = append(out, in.Location)
			}
		}
	}
	return out
}

// located attaches the Dockerfile locations of block d to err, so the client
// shows the user's IMPORT line.
func (r *resolver) located(err error, d digest.Digest) error {
	return wrapSource(err, r.sm, r.where(d)...)
}

// lineOf is the first line that names d, for messages.
func (r *resolver) lineOf(d digest.Digest) int {
	if w := r.where(d); len(w) > 0 {
		return w[0][0].Start.Line
	}
	return 0
}

// states resolves every run and returns the named-context states, by run name.
func (r *resolver) states(ctx context.Context) (map[string]llb.State, error) {
	var top []digest.Digest
	seen := map[digest.Digest]bool{}
	for _, run := range r.df.Runs {
		for _, in := range run.Imports {
			if !seen[in.Block] {
				seen[in.Block] = true
				top = append(top, in.Block)
			}
		}
	}
	var (
		src   llbgen.BlockSource
		trees map[digest.Digest]*tree.Tree
		err   error
	)
	if repo := r.opts["build-arg:"+ArgRepo]; repo != "" {
		src = llbgen.Registry{Repo: repo}
		trees, err = r.remoteTrees(ctx, src, top)
	} else if u := r.opts["build-arg:"+ArgURL]; u != "" {
		src = llbgen.HTTP{BaseURL: u}
		trees, err = r.remoteTrees(ctx, src, top)
	} else if id := r.opts["build-arg:"+ArgOCIStore]; id != "" {
		src = llbgen.OCIStore{StoreID: id, SessionID: r.c.BuildOpts().SessionID}
		trees, err = r.remoteTrees(ctx, src, top)
	} else {
		src, trees, err = r.store(ctx, top)
	}
	if err != nil {
		return nil, err
	}

	t, err := epoch(r.opts)
	if err != nil {
		return nil, err
	}
	out := map[string]llb.State{}
	for _, run := range r.df.Runs {
		imports := make([]llbgen.Import, 0, len(run.Imports))
		var ranges []*pb.Range
		for i := range run.Imports {
			in := &run.Imports[i]
			in.Tree = trees[in.Block]
			if in.Tree == nil && strings.HasSuffix(in.Dest, "/") {
				err := fmt.Errorf("IMPORT on line %d: block %s is a file, not a tree: give a file path as destination, not a folder (%s)", in.Location[0].Start.Line, in.Block, in.Dest)
				return nil, wrapSource(err, r.sm, in.Location)
			}
			imports = append(imports, in.Import)
			ranges = append(ranges, pbRanges(in.Location)...)
		}
		loc := run.Location()
		name := fmt.Sprintf("IMPORT %d block(s) [lines %d-%d]", len(imports), loc[0].Start.Line, loc[0].End.Line)
		st, err := llbgen.ImportState(imports, src, llbgen.Options{
			Time:        t,
			Constraints: []llb.ConstraintsOpt{llb.WithCustomName(name), r.sm.Location(ranges)},
			Requires:    r.requires,
		})
		if err != nil {
			return nil, wrapSource(fmt.Errorf("line %d: %w", loc[0].Start.Line, err), r.sm, loc)
		}
		out[run.Name] = st
	}
	return out, nil
}

// storeState is the block store directory with only the blobs of ds.
func (r *resolver) storeState(ctx context.Context, ds []digest.Digest) (llb.State, error) {
	pats := llbgen.StorePatterns(ds)
	if _, ok := r.opts["context:"+ContextName]; ok {
		nc, err := r.bc.NamedContext(ContextName, dockerui.ContextOpt{
			NoDockerignore: true,
			AsyncLocalOpts: func() []llb.LocalOption { return []llb.LocalOption{llb.IncludePatterns(pats)} },
		})
		if err != nil {
			return llb.State{}, fmt.Errorf("build context %q: %v", ContextName, gatewayErr(err))
		}
		if nc != nil {
			st, _, err := nc.Load(ctx)
			if err != nil {
				return llb.State{}, fmt.Errorf("build context %q: %v", ContextName, gatewayErr(err))
			}
			return *st, nil
		}
	}
	sid := r.c.BuildOpts().SessionID
	if v, ok := r.opts["local-sessionid:"+ContextName]; ok {
		sid = v
	}
	return llb.Local(ContextName,
		llb.SessionID(sid),
		llb.IncludePatterns(pats),
		llb.SharedKeyHint(ContextName),
		llb.WithCustomName("[blocks] load blocks from the store"),
	), nil
}

func (r *resolver) solve(ctx context.Context, st llb.State) (gwclient.Reference, error) {
	def, err := st.Marshal(ctx)
	if err != nil {
		return nil, err
	}
	res, err := r.c.Solve(ctx, gwclient.SolveRequest{Definition: def.ToPB()})
	if err != nil {
		return nil, err
	}
	ref, err := res.SingleRef()
	if err != nil {
		return nil, err
	}
	// Solve is lazy; evaluate now so that a missing source fails here, with
	// a message about the source, not later on the first read.
	if err := ref.Evaluate(ctx); err != nil {
		return nil, err
	}
	return ref, nil
}

// store reads the blocks from a store directory. BuildKit does not hash
// local files, so every block is verified before the build uses it: by a
// build step running the frontend image over the store when the frontend
// runs as an image (cached by the blobs' content, so warm builds skip it),
// else by reading each block back through the gateway.
func (r *resolver) store(ctx context.Context, top []digest.Digest) (llbgen.BlockSource, map[digest.Digest]*tree.Tree, error) {
	st, err := r.storeState(ctx, top)
	if err != nil {
		return nil, nil, err
	}
	ref, err := r.solve(ctx, st)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (%v)", ErrNoSource, gatewayErr(err))
	}
	image := r.opts[keySource]
	// In the process that owns the store (blockfile build), blocks are
	// checked on disk through the store's verified-block cache, unless the
	// "blocks" context was redirected somewhere else.
	_, named := r.opts["context:"+ContextName]
	local := image == "" && r.local != nil && !named
	var trees map[digest.Digest]*tree.Tree
	switch {
	case image != "":
		trees, err = r.findTrees(ctx, ref, llbgen.Store{State: st}, top)
	case local:
		if err = r.verifyLocal(ctx, top, nil); err == nil {
			trees, err = r.findTrees(ctx, ref, llbgen.Store{State: st}, top)
		}
	default:
		trees, err = r.verifyAll(ctx, ref, llbgen.Store{State: st}, top, nil)
	}
	if err != nil {
		return nil, nil, err
	}

	// The trees' file blocks come from the same store: transfer the union.
	all := slices.Clone(top)
	var files []digest.Digest // the blocks that are files, not tree documents
	owner := map[digest.Digest]digest.Digest{}
	seen := map[digest.Digest]bool{}
	for _, d := range top {
		seen[d] = true
		if trees[d] == nil {
			files = append(files, d)
		}
	}
	for _, d := range top {
		if t := trees[d]; t != nil {
			for _, b := range t.Blocks() {
				if !seen[b.Digest] {
					seen[b.Digest] = true
					all = append(all, b.Digest)
					files = append(files, b.Digest)
					owner[b.Digest] = d
				}
			}
		}
	}
	if len(all) > len(top) {
		if st, err = r.storeState(ctx, all); err != nil {
			return nil, nil, err
		}
		if ref, err = r.solve(ctx, st); err != nil {
			return nil, nil, fmt.Errorf("%w (%v)", ErrNoSource, gatewayErr(err))
		}
		switch {
		case local:
			if err := r.verifyLocal(ctx, all[len(top):], owner); err != nil {
				return nil, nil, err
			}
		case image == "":
			if _, err := r.verifyAll(ctx, ref, llbgen.Store{State: st}, all[len(top):], owner); err != nil {
				return nil, nil, err
			}
		}
	}
	if image == "" || len(files) == 0 {
		return llbgen.Store{State: st}, trees, nil
	}

	verified := verifyStep(image, st, files)
	if _, err := r.solve(ctx, verified); err != nil {
		// Say which block and line: read them back through the gateway.
		if _, verr := r.verifyAll(ctx, ref, llbgen.Store{State: st}, files, owner); verr != nil {
			return nil, nil, verr
		}
		return nil, nil, fmt.Errorf("verify blocks: %v", gatewayErr(err))
	}
	r.requires = append(r.requires, verified)
	return llbgen.Store{State: st}, trees, nil
}

// keySource is the frontend option naming the frontend image when the
// frontend runs as one (set by BuildKit's gateway).
const keySource = "source"

// findTrees reads the first bytes of each block of ds in ref and parses
// (and verifies) those that are tree documents. File blocks are not hashed
// here.
func (r *resolver) findTrees(ctx context.Context, ref gwclient.Reference, src llbgen.BlockSource, ds []digest.Digest) (map[digest.Digest]*tree.Tree, error) {
	var mu sync.Mutex
	trees := map[digest.Digest]*tree.Tree{}
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(8)
	for _, d := range ds {
		eg.Go(func() error {
			_, p := src.Block(d)
			t, err := treeAt(ctx, ref, p, d)
			if err != nil {
				return r.located(fmt.Errorf("IMPORT on line %d: block %s: %w", r.lineOf(d), d, err), d)
			}
			if t != nil {
				mu.Lock()
				trees[d] = t
				mu.Unlock()
			}
			return nil
		})
	}
	return trees, eg.Wait()
}

// treeAt returns the tree document at p if the block starts like one, nil
// for a file block.
func treeAt(ctx context.Context, ref gwclient.Reference, p string, d digest.Digest) (*tree.Tree, error) {
	head, err := ref.ReadFile(ctx, gwclient.ReadRequest{Filename: p, Range: &gwclient.FileRange{Length: len(treePrefix)}})
	if err != nil {
		return nil, fmt.Errorf("not found (%s): %v", strings.TrimPrefix(p, "/"), gatewayErr(err))
	}
	if !bytes.Equal(head, treePrefix) {
		return nil, nil
	}
	t, err := readTree(ctx, ref, p, d)
	if err != nil {
		return nil, fmt.Errorf("tree: %w", err)
	}
	return t, nil
}

// verifyLocal checks each block of ds in the local store with r.local
// (hashing only blocks that changed since they were last verified). owner
// maps a tree's file block to its tree, for messages.
func (r *resolver) verifyLocal(ctx context.Context, ds []digest.Digest, owner map[digest.Digest]digest.Digest) error {
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for _, d := range ds {
		eg.Go(func() error {
			if _, err := r.local.VerifyBlob(ctx, d); err != nil {
				at := d
				if o, ok := owner[d]; ok {
					at = o
				}
				what := fmt.Sprintf("IMPORT on line %d: block %s", r.lineOf(at), d)
				if at != d {
					what = fmt.Sprintf("IMPORT on line %d: block %s of tree %s", r.lineOf(at), d, at)
				}
				return r.located(fmt.Errorf("%s: %w", what, err), at)
			}
			return nil
		})
	}
	return eg.Wait()
}

// verifyAll hashes each block of ds in ref and parses those that are tree
// documents. owner maps a tree's file block to its tree, for messages.
func (r *resolver) verifyAll(ctx context.Context, ref gwclient.Reference, src llbgen.BlockSource, ds []digest.Digest, owner map[digest.Digest]digest.Digest) (map[digest.Digest]*tree.Tree, error) {
	var mu sync.Mutex
	trees := map[digest.Digest]*tree.Tree{}
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for _, d := range ds {
		eg.Go(func() error {
			_, p := src.Block(d)
			isTree, err := readVerified(ctx, ref, p, d)
			at := d
			if o, ok := owner[d]; ok {
				at = o
			}
			if err != nil {
				what := fmt.Sprintf("IMPORT on line %d: block %s", r.lineOf(at), d)
				if at != d {
					what = fmt.Sprintf("IMPORT on line %d: block %s of tree %s", r.lineOf(at), d, at)
				}
				return r.located(fmt.Errorf("%s: %w", what, err), at)
			}
			if !isTree || owner != nil { // a tree's entries are files, whatever they hold
				return nil
			}
			t, err := readTree(ctx, ref, p, d)
			if err != nil {
				return r.located(fmt.Errorf("IMPORT on line %d: tree %s: %w", r.lineOf(d), d, err), d)
			}
			mu.Lock()
			trees[d] = t
			mu.Unlock()
			return nil
		})
	}
	return trees, eg.Wait()
}

// remoteTrees finds the tree blocks among ds for sources that BuildKit
// verifies itself (registry, HTTP, OCI store): each block is fetched (it is needed
// anyway, and cached) and its first bytes read.
func (r *resolver) remoteTrees(ctx context.Context, src llbgen.BlockSource, ds []digest.Digest) (map[digest.Digest]*tree.Tree, error) {
	var mu sync.Mutex
	trees := map[digest.Digest]*tree.Tree{}
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(8)
	for _, d := range ds {
		eg.Go(func() error {
			st, p := src.Block(d)
			ref, err := r.solve(ctx, st)
			if err != nil {
				return r.located(fmt.Errorf("IMPORT on line %d: fetch block %s: %v", r.lineOf(d), d, gatewayErr(err)), d)
			}
			t, err := treeAt(ctx, ref, p, d)
			if err != nil {
				return r.located(fmt.Errorf("IMPORT on line %d: block %s: %w", r.lineOf(d), d, err), d)
			}
			if t == nil {
				return nil
			}
			mu.Lock()
			trees[d] = t
			mu.Unlock()
			return nil
		})
	}
	return trees, eg.Wait()
}

// readVerified streams p from ref in ranges, hashing as it goes, and checks
// the digest. It reports whether the content starts like a tree document.
func readVerified(ctx context.Context, ref gwclient.Reference, p string, d digest.Digest) (isTree bool, err error) {
	h := d.Algorithm().Digester()
	var head []byte
	for off := 0; ; {
		dt, err := ref.ReadFile(ctx, gwclient.ReadRequest{Filename: p, Range: &gwclient.FileRange{Offset: off, Length: readChunk}})
		if err != nil {
			return false, fmt.Errorf("not found in the block store (%s): %v", strings.TrimPrefix(p, "/"), gatewayErr(err))
		}
		if off == 0 {
			head = dt[:min(len(dt), len(treePrefix))]
			head = bytes.Clone(head)
		}
		h.Hash().Write(dt)
		off += len(dt)
		if len(dt) < readChunk {
			break
		}
	}
	if got := h.Digest(); got != d {
		return false, fmt.Errorf("content does not match its digest (the bytes at %s hash to %s): the store is corrupt or was tampered with; run blockfile verify", strings.TrimPrefix(p, "/"), got)
	}
	return bytes.Equal(head, treePrefix), nil
}

// readTree reads, verifies and parses the tree document at p.
func readTree(ctx context.Context, ref gwclient.Reference, p string, d digest.Digest) (*tree.Tree, error) {
	var buf bytes.Buffer
	for off := 0; ; {
		dt, err := ref.ReadFile(ctx, gwclient.ReadRequest{Filename: p, Range: &gwclient.FileRange{Offset: off, Length: readChunk}})
		if err != nil {
			return nil, errors.New(gatewayErr(err))
		}
		buf.Write(dt)
		off += len(dt)
		if len(dt) < readChunk {
			break
		}
		if buf.Len() > tree.DefaultLimit {
			return nil, fmt.Errorf("tree document larger than %d bytes", tree.DefaultLimit)
		}
	}
	if got := digest.FromBytes(buf.Bytes()); got != d {
		return nil, fmt.Errorf("content does not match its digest (hashes to %s)", got)
	}
	return tree.Parse(&buf, tree.DefaultLimit)
}

func pbRanges(rs []parser.Range) []*pb.Range {
	out := make([]*pb.Range, 0, len(rs))
	for _, r := range rs {
		out = append(out, &pb.Range{
			Start: &pb.Position{Line: int32(r.Start.Line), Character: int32(r.Start.Character)},
			End:   &pb.Position{Line: int32(r.End.Line), Character: int32(r.End.Character)},
		})
	}
	return out
}

// gatewayErr is the text of an error from a gateway call. It is formatted
// with %v, not wrapped: BuildKit sends an error to the client as the
// innermost gRPC status in its chain, which would drop our message (the
// digest and the Dockerfile line) and keep only the gateway's.
func gatewayErr(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}
