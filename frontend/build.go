package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/frontend/dockerfile/builder"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/buildkit/frontend/dockerui"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	gwpb "github.com/moby/buildkit/frontend/gateway/pb"
	"github.com/moby/buildkit/frontend/subrequests/lint"
	"github.com/moby/buildkit/solver/errdefs"
	"github.com/moby/buildkit/solver/pb"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	"github.com/opencontainers/go-digest"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/llbgen"
)

// Build is the gateway BuildFunc of the Blockfile frontend. A Dockerfile
// without IMPORT goes to the upstream Dockerfile frontend unchanged. With
// IMPORTs, each run of them is rewritten into one
// `COPY --link --from=<generated context> / /` on the same line, and upstream
// builds that Dockerfile with a client that serves the generated contexts
// (the import layers) as frontend inputs.
func Build(ctx context.Context, c gwclient.Client) (*gwclient.Result, error) {
	return build(ctx, c, nil)
}

// BlockVerifier checks a block of the local store on disk (store.Store
// implements it, with a cache of blocks already verified and unchanged).
type BlockVerifier interface {
	VerifyBlob(ctx context.Context, d digest.Digest) (cached bool, err error)
}

// BuildWithStore is Build for a frontend running in the process that owns
// the local block store sent as the "blocks" context (blockfile build): v
// checks the blocks on disk instead of the frontend reading every byte back
// through the gateway, so a warm build reads only blocks that changed.
func BuildWithStore(v BlockVerifier) gwclient.BuildFunc {
	return func(ctx context.Context, c gwclient.Client) (*gwclient.Result, error) {
		return build(ctx, c, v)
	}
}

func build(ctx context.Context, c gwclient.Client, local BlockVerifier) (*gwclient.Result, error) {
	bc, err := dockerui.NewClient(c)
	if err != nil {
		return nil, err
	}
	src, err := bc.ReadEntrypoint(ctx, "Dockerfile")
	if err != nil {
		return builder.Build(ctx, c) // upstream reports a missing Dockerfile its own way
	}
	df, err := Parse(src.Data)
	if err != nil {
		var ie *ImportError
		if errors.As(err, &ie) {
			return nil, wrapSource(err, src.SourceMap, ie.Location)
		}
		return builder.Build(ctx, c) // not ours: upstream reports it
	}
	if len(df.Runs) == 0 {
		return builder.Build(ctx, c)
	}

	opts := maps.Clone(c.BuildOpts().Opts)
	if opts == nil {
		opts = map[string]string{}
	}
	rewritten := df.Rewrite(func(name string) bool {
		_, ok := opts["context:"+name]
		return ok || name == dockerui.DefaultLocalNameContext || name == dockerui.DefaultLocalNameDockerfile
	})
	wopts := maps.Clone(opts)
	for _, run := range df.Runs {
		wopts["context:"+run.Name] = "input:" + run.Name
	}
	if _, ok := wopts["cmdline"]; !ok {
		// Running in-process (blockfile build): without cmdline, upstream
		// would hand a `# syntax=` Dockerfile to that image again.
		wopts["cmdline"] = "blockfile"
	}
	res := &resolver{c: c, bc: bc, opts: opts, sm: src.SourceMap, df: df, local: local}
	imports := func() (map[string]llb.State, error) { return res.states(ctx) }
	if opts[keyRequestID] != "" {
		// A subrequest (--check, --call=outline/targets) only converts the
		// Dockerfile: it needs the contexts to exist, not the blocks.
		imports = func() (map[string]llb.State, error) {
			m := map[string]llb.State{}
			for _, run := range df.Runs {
				m[run.Name] = llb.Scratch()
			}
			return m, nil
		}
	}
	w := &client{
		Client:    c,
		opts:      wopts,
		original:  src.Data,
		rewritten: rewritten,
		imports:   sync.OnceValues(imports),
	}
	if d := src.SourceMap.Definition; d != nil && len(d.Def) > 0 {
		w.dockerfileOp = digest.FromBytes(d.Def[len(d.Def)-1])
	}

	out, err := builder.Build(ctx, w)
	if err != nil {
		return nil, w.restore(err)
	}
	if opts[keyRequestID] == lint.SubrequestLintDefinition.Name {
		if err := w.restoreLint(out); err != nil {
			return nil, err
		}
		return out, nil
	}
	if err := addLabel(out, df, opts); err != nil {
		return nil, err
	}
	return out, nil
}

// keyRequestID is the frontend option naming a subrequest (see dockerui).
const keyRequestID = "requestid"

// restoreLint puts the original Dockerfile text into a lint result, so
// --check shows the user's lines around a warning.
func (w *client) restoreLint(res *gwclient.Result) error {
	dt, ok := res.Metadata["result.json"]
	if !ok {
		return nil
	}
	var lr lint.LintResults
	if err := json.Unmarshal(dt, &lr); err != nil {
		return fmt.Errorf("lint result: %w", err)
	}
	changed := false
	for _, si := range lr.Sources {
		if si != nil && bytes.Equal(si.Data, w.rewritten) {
			si.Data = w.original
			changed = true
		}
	}
	if !changed {
		return nil
	}
	fixed, err := lr.ToResult(nil)
	if err != nil {
		return fmt.Errorf("lint result: %w", err)
	}
	maps.Copy(res.Metadata, fixed.Metadata)
	return nil
}

// client is the gateway client that upstream builds with: it adds the
// import contexts, feeds upstream the rewritten Dockerfile, and puts the
// user's text back wherever the Dockerfile's source travels (LLB source
// maps, warnings, errors), so messages show the user's lines.
type client struct {
	gwclient.Client
	opts                map[string]string
	original, rewritten []byte
	dockerfileOp        digest.Digest // the op that loads the Dockerfile
	imports             func() (map[string]llb.State, error)
}

func (w *client) BuildOpts() gwclient.BuildOpts {
	bo := w.Client.BuildOpts()
	bo.Opts = maps.Clone(w.opts)
	return bo
}

func (w *client) Inputs(ctx context.Context) (map[string]llb.State, error) {
	out := map[string]llb.State{}
	caps := w.Client.BuildOpts().Caps
	if caps.Supports(gwpb.CapFrontendInputs) == nil {
		in, err := w.Client.Inputs(ctx)
		if err != nil {
			return nil, err
		}
		maps.Copy(out, in)
	}
	imports, err := w.imports()
	if err != nil {
		return nil, err
	}
	maps.Copy(out, imports)
	return out, nil
}

func (w *client) Solve(ctx context.Context, req gwclient.SolveRequest) (*gwclient.Result, error) {
	req.Definition = w.swapDefinition(req.Definition)
	res, err := w.Client.Solve(ctx, req)
	if err != nil {
		return nil, w.restore(err)
	}
	def := req.Definition
	if res != nil && res.Ref != nil && def != nil && len(def.Def) > 0 && digest.FromBytes(def.Def[len(def.Def)-1]) == w.dockerfileOp {
		res.Ref = &dockerfileRef{Reference: res.Ref, original: w.original, rewritten: w.rewritten}
	}
	return res, nil
}

func (w *client) Warn(ctx context.Context, dgst digest.Digest, msg string, opts gwclient.WarnOpts) error {
	if opts.SourceInfo != nil && bytes.Equal(opts.SourceInfo.Data, w.rewritten) {
		si := opts.SourceInfo.CloneVT()
		si.Data = w.original
		opts.SourceInfo = si
	}
	return w.Client.Warn(ctx, dgst, msg, opts)
}

// swapDefinition returns def with the rewritten Dockerfile replaced by the
// original in its source maps.
func (w *client) swapDefinition(def *pb.Definition) *pb.Definition {
	if def == nil || def.Source == nil {
		return def
	}
	found := false
	for _, info := range def.Source.Infos {
		if bytes.Equal(info.Data, w.rewritten) {
			found = true
		}
	}
	if !found {
		return def
	}
	def = def.CloneVT()
	for _, info := range def.Source.Infos {
		if bytes.Equal(info.Data, w.rewritten) {
			info.Data = w.original
		}
	}
	return def
}

// restore puts the original Dockerfile text into the sources of err.
func (w *client) restore(err error) error {
	for _, s := range errdefs.Sources(err) {
		if s.Info != nil && bytes.Equal(s.Info.Data, w.rewritten) {
			s.Info.Data = w.original
		}
	}
	return err
}

// dockerfileRef serves the rewritten Dockerfile in place of the original.
// Only the bytes that are exactly the user's Dockerfile are replaced.
type dockerfileRef struct {
	gwclient.Reference
	original, rewritten []byte
}

func (r *dockerfileRef) ReadFile(ctx context.Context, req gwclient.ReadRequest) ([]byte, error) {
	dt, err := r.Reference.ReadFile(ctx, req)
	if err == nil && (req.Range == nil || req.Range.Offset == 0) && bytes.Equal(dt, r.original) {
		return r.rewritten, nil
	}
	return dt, err
}

// wrapSource attaches Dockerfile locations to err (as upstream's builder does).
func wrapSource(err error, sm *llb.SourceMap, locs ...[]parser.Range) error {
	if sm == nil {
		return err
	}
	for _, l := range locs {
		s := &errdefs.Source{
			Info: &pb.SourceInfo{
				Data:       sm.Data,
				Filename:   sm.Filename,
				Language:   sm.Language,
				Definition: sm.Definition.ToPB(),
			},
			Ranges: pbRanges(l),
		}
		err = errdefs.WithSource(err, s)
	}
	return err
}

// epoch is the mtime of imported files: SOURCE_DATE_EPOCH if the build sets
// it, else the Unix epoch.
func epoch(opts map[string]string) (time.Time, error) {
	v, ok := opts["build-arg:SOURCE_DATE_EPOCH"]
	if !ok || v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid SOURCE_DATE_EPOCH %q: %w", v, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

// addLabel records the imports of the final stage's chain in the image
// config label blocks.LabelImports, merged with the value inherited from the
// base image.
func addLabel(res *gwclient.Result, df *Dockerfile, opts map[string]string) error {
	chain := df.chain(opts)
	var imports []llbgen.Import
	for _, run := range df.Runs {
		for _, in := range run.Imports {
			if chain[in.Stage] {
				imports = append(imports, in.Import)
			}
		}
	}
	if len(imports) == 0 {
		return nil
	}
	for k, v := range res.Metadata {
		if k != exptypes.ExporterImageConfigKey && !strings.HasPrefix(k, exptypes.ExporterImageConfigKey+"/") {
			continue
		}
		var img dockerspec.DockerOCIImage
		if err := json.Unmarshal(v, &img); err != nil {
			return fmt.Errorf("image config %s: %w", k, err)
		}
		label, err := llbgen.MergeLabel(img.Config.Labels[blocks.LabelImports], imports)
		if err != nil {
			return err
		}
		if img.Config.Labels == nil {
			img.Config.Labels = map[string]string{}
		}
		img.Config.Labels[blocks.LabelImports] = label
		b, err := json.Marshal(img)
		if err != nil {
			return fmt.Errorf("image config %s: %w", k, err)
		}
		res.Metadata[k] = b
	}
	return nil
}

// chain returns the stages whose content the final stage (the target, else
// the last) is built on: itself and the stages it names in FROM, followed.
// ARGs in FROM are expanded with the build args and the global ARG defaults.
func (df *Dockerfile) chain(opts map[string]string) map[int]bool {
	out := map[int]bool{}
	if len(df.Stages) == 0 {
		return out
	}
	idx := len(df.Stages) - 1
	if t := strings.ToLower(opts["target"]); t != "" {
		for i, s := range df.Stages {
			if s.Name == t {
				idx = i
			}
		}
	}
	env := []string{}
	for k, v := range df.MetaArg {
		if b, ok := opts["build-arg:"+k]; ok {
			v = b
		}
		env = append(env, k+"="+v)
	}
	lex := shell.NewLex('\\')
	for idx >= 0 && !out[idx] {
		out[idx] = true
		base := df.Stages[idx].Base
		if strings.Contains(base, "$") {
			if v, _, err := lex.ProcessWord(base, shell.EnvsFromSlice(env)); err == nil {
				base = v
			}
		}
		next := -1
		for i := 0; i < idx; i++ {
			if df.Stages[i].Name != "" && df.Stages[i].Name == strings.ToLower(base) {
				next = i
			}
		}
		idx = next
	}
	return out
}
