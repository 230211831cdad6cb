package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/moby/buildkit/session/sshforward/sshprovider"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/spf13/cobra"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/frontend"
	"github.com/blockfile/blockfile/internal/units"
)

func init() { register(newBuildCmd()) }

// defaultBuildkitAddr is buildkitd's default socket.
const defaultBuildkitAddr = "unix:///run/buildkit/buildkitd.sock"

// buildResult is what `build --json` prints: the export result, and where
// the standard image was also written.
type buildResult struct {
	*image.ExportResult
	Outputs []string               `json:"outputs,omitempty"`
	Pushed  []*registry.PushResult `json:"pushed,omitempty"`
}

func newBuildCmd() *cobra.Command {
	var (
		addr, file, platform, target, name, progress, compression, minSize string
		buildArgs, secrets, sshs, cacheFrom, cacheTo, outputs, pushes      []string
		asJSON                                                             bool
	)
	cmd := &cobra.Command{
		Use:   "build [flags] -t NAME CONTEXT",
		Short: "Build a Dockerfile with IMPORT and store the image and its blocked form",
		Long: `Build runs the Blockfile frontend in this process against buildkitd, with the
store as the "blocks" build context, and hands the resulting OCI image straight to
export: the store then holds the standard image and its blocked form under NAME.
The standard manifest digest is printed.

--push REF then pushes the image as 'blockfile push' does (one tag: an index
of the standard image, exactly the digest printed, and its blocked form, so
'blockfile pull' fetches only missing blocks), and -o DEST writes the standard
image alone to any destination hydrate takes (oci-archive:FILE, oci:DIR,
docker://REF). --secret, --ssh, --cache-from and --cache-to take the
values docker buildx build takes and are passed to BuildKit as it does.

Blocks are verified before the build uses them (BuildKit does not hash local
files); the store remembers which blocks it verified, by inode, size, mtime and
ctime, so a warm build reads only blocks that changed.

The Dockerfile may start with a "# syntax=" line naming the frontend image; it is
ignored here, since the frontend runs in-process.`,
		Example: `  blockfile build -t app:v2 .
  blockfile build -t app:v2 --push registry.example/app:v2 \
    --secret id=npmrc,src=$HOME/.npmrc --ssh default \
    --cache-from type=registry,ref=registry.example/app:cache \
    --cache-to type=registry,ref=registry.example/app:cache,mode=max .`,
		Args: exactArgs(1),
	}
	openStore := createStoreFlag(cmd)
	reg := registryFlags(cmd) // for --push and -o docker://
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "buildkitd address (default $BUILDKIT_HOST, else "+defaultBuildkitAddr+")")
	f.StringVarP(&file, "file", "f", "", "the Dockerfile (default CONTEXT/Dockerfile)")
	f.StringArrayVar(&buildArgs, "build-arg", nil, "a build argument K=V (repeatable)")
	f.StringVar(&platform, "platform", "", "target platform(s), e.g. linux/amd64")
	f.StringVar(&target, "target", "", "the stage to build")
	f.StringVarP(&name, "tag", "t", "", "the image name in the store (required)")
	f.StringArrayVar(&secrets, "secret", nil, "a secret for RUN --mount=type=secret: id=ID[,src=FILE] or id=ID,env=VAR (repeatable, as buildx)")
	f.StringArrayVar(&sshs, "ssh", nil, "an SSH agent or keys for RUN --mount=type=ssh: default|ID[=SOCKET|KEY[,KEY]] (repeatable, as buildx)")
	f.StringArrayVar(&cacheFrom, "cache-from", nil, "cache source: type=registry,ref=REF | type=local,src=DIR | REF (repeatable, as buildx)")
	f.StringArrayVar(&cacheTo, "cache-to", nil, "cache destination: type=registry,ref=REF[,mode=max] | type=local,dest=DIR[,mode=max] | type=inline (repeatable, as buildx)")
	f.StringArrayVar(&pushes, "push", nil, "after export, push the image to the registry tag REF as 'blockfile push' does: the standard image and its blocked form (repeatable)")
	addOutputsFlag(cmd, &outputs, "also write the standard image to DEST: oci-archive:FILE[:REF], oci:DIR[:REF] or docker://REF (repeatable)")
	addProgressFlag(cmd, &progress)
	f.StringVar(&compression, "compression", "gzip", "layer compression in the store: gzip or zstd")
	f.StringVar(&minSize, "min-block-size", units.Exact(image.DefaultMinBlockSize), "regular files of at least this size become blocks on export")
	addJSONFlag(cmd, &asJSON, "print the export result (and outputs) as JSON")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if name == "" {
			return usageError{errors.New("build: -t NAME is required")}
		}
		attrs := map[string]string{}
		for _, kv := range buildArgs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				if v, ok := os.LookupEnv(kv); ok && kv != "" { // like docker: --build-arg K takes K from the environment
					attrs["build-arg:"+kv] = v
					continue
				}
				return usageError{fmt.Errorf("--build-arg %q: want K=V", kv)}
			}
			attrs["build-arg:"+k] = v
		}
		if platform != "" {
			attrs["platform"] = platform
		}
		if target != "" {
			attrs["target"] = target
		}
		progress, err := checkProgress(progress)
		if err != nil {
			return err
		}
		size, c, err := splitFlags(minSize, compression)
		if err != nil {
			return err
		}
		opt := buildOptions{attrs: attrs, mode: progressui.DisplayMode(progress), stderr: cmd.ErrOrStderr()}
		if opt.cacheImports, err = parseCacheEntries("--cache-from", cacheFrom, false); err != nil {
			return err
		}
		if opt.cacheExports, err = parseCacheEntries("--cache-to", cacheTo, true); err != nil {
			return err
		}
		if a, err := secretsAttachable(secrets); err != nil {
			return err
		} else if a != nil {
			opt.session = append(opt.session, a)
		}
		if a, err := sshAttachable(sshs); err != nil {
			return err
		} else if a != nil {
			opt.session = append(opt.session, a)
		}
		// BuildKit pulls bases and pushes/pulls registry caches with the
		// credentials blockfile uses (--authfile, else the docker config).
		auth, err := dockerAuthAttachable(reg.AuthFile, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		opt.session = append(opt.session, auth)
		for _, p := range pushes {
			if _, _, err := reg.Remote(cmd.Context(), p); err != nil {
				return usageError{fmt.Errorf("--push %q: %w", p, err)}
			}
		}
		if addr == "" {
			addr = os.Getenv("BUILDKIT_HOST")
		}
		if addr == "" {
			addr = defaultBuildkitAddr
		}
		opt.addr = addr
		contextDir := args[0]
		if file == "" {
			file = filepath.Join(contextDir, "Dockerfile")
		}
		attrs["filename"] = filepath.Base(file)
		// The frontend runs here: tell upstream not to hand a `# syntax=`
		// Dockerfile to that image (see frontend.Build).
		attrs["cmdline"] = "blockfile build"

		s, err := openStore()
		if err != nil {
			return err
		}
		opt.verifier = s
		ctx := cmd.Context()
		// Check every destination before building: a typo should not cost a build.
		for _, o := range outputs {
			if err := checkDestination(o); err != nil {
				return err
			}
		}
		// The store is the "blocks" context, as with buildx --build-context
		// (the frontend verifies each block it reads). Attaching it as a
		// session OCI store (frontend.ArgOCIStore) also works, but the
		// session's content proxy made cold builds about twice as slow.
		opt.dirs = map[string]string{
			"context":            contextDir,
			"dockerfile":         filepath.Dir(file),
			frontend.ContextName: s.Root(),
		}
		archive, err := buildImage(ctx, opt)
		if archive != "" {
			defer os.Remove(archive)
		}
		if err != nil {
			return err
		}
		src, err := transport.ParseSource(ctx, "oci-archive:"+archive)
		if err != nil {
			return err
		}
		defer src.Close()
		pw, plain, err := progressOutput(progress, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		res, err := image.Export(ctx, s, src, name, image.ExportOptions{
			Compression: c, MinBlockSize: size, Progress: pw, PlainProgress: plain,
		})
		if err != nil {
			return fmt.Errorf("export %s: %w", name, err)
		}
		// Push/write the standard image: the digest just printed, byte for
		// byte (hydrate verifies every blob on the way).
		for _, o := range outputs {
			dst, err := transport.ParseSink(ctx, o, transport.WithDefaultName(name), transport.WithRegistry(*reg))
			if err != nil {
				return err
			}
			d, err := image.Hydrate(ctx, s, name, dst, image.HydrateOptions{Progress: pw, PlainProgress: plain})
			if err != nil {
				return fmt.Errorf("write %s to %s: %w", name, o, err)
			}
			if d.Digest != res.Standard.Digest {
				return fmt.Errorf("write %s to %s: wrote %s, want the standard image %s", name, o, d.Digest, res.Standard.Digest)
			}
			if ref, ok := strings.CutPrefix(o, "docker://"); ok {
				// Signatures, attestations and SBOMs the store keeps for it, as hydrate does.
				if _, err := image.PushReferrers(ctx, s, d, *reg, ref); err != nil {
					return fmt.Errorf("write %s to %s: pushed the image, but not its signatures and attestations: %w", name, o, err)
				}
			}
			if !asJSON {
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s to %s\n", d.Digest, o)
			}
		}
		// --push: what 'blockfile push' does, so pull and site mirrors get
		// the blocked form beside the standard image.
		var pushed []*registry.PushResult
		for _, p := range pushes {
			ref, ropts, err := reg.Remote(ctx, p)
			if err != nil {
				return usageError{fmt.Errorf("--push %q: %w", p, err)}
			}
			pr, err := registry.Push(ctx, s, name, ref, registry.PushOptions{
				Remote: ropts, Progress: pw, PlainProgress: plain, TagChildren: true,
			})
			if err != nil {
				return fmt.Errorf("push %s to %s: %w", name, p, err)
			}
			if pr.Standard.Digest != res.Standard.Digest {
				return fmt.Errorf("push %s to %s: pushed the standard image %s, want %s", name, p, pr.Standard.Digest, res.Standard.Digest)
			}
			pushed = append(pushed, pr)
			if !asJSON {
				fmt.Fprintf(cmd.ErrOrStderr(), "pushed %s to %s (index %s)\n", pr.Standard.Digest, pr.Ref, pr.Index.Digest)
			}
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), buildResult{res, outputs, pushed})
		}
		fmt.Fprintln(cmd.OutOrStdout(), res.Standard.Digest)
		return nil
	}
	return cmd
}

// checkDestination refuses a destination no sink takes, as a usage error,
// before anything is built.
func checkDestination(ref string) error {
	for _, p := range []string{"oci:", "oci-archive:", "docker://"} {
		if strings.HasPrefix(ref, p) && len(ref) > len(p) {
			return nil
		}
	}
	return usageError{fmt.Errorf("output %q: want oci-archive:FILE[:REF], oci:DIR[:REF] or docker://REF", ref)}
}

// buildOptions is one in-process build.
type buildOptions struct {
	addr         string
	mode         progressui.DisplayMode
	stderr       io.Writer
	attrs, dirs  map[string]string
	verifier     frontend.BlockVerifier
	session      []session.Attachable
	cacheImports []bkclient.CacheOptionsEntry
	cacheExports []bkclient.CacheOptionsEntry
}

// buildImage builds with the frontend in-process and writes the image as an
// OCI archive to a temporary file, whose path it returns (also on error, so
// the caller removes it).
func buildImage(ctx context.Context, o buildOptions) (string, error) {
	mounts := map[string]fsutil.FS{}
	for k, dir := range o.dirs {
		fs, err := fsutil.NewFS(dir)
		if err != nil {
			return "", fmt.Errorf("build context %s: %w", k, err)
		}
		mounts[k] = fs
	}
	tmp, err := os.CreateTemp("", "blockfile-build-*.oci.tar")
	if err != nil {
		return "", err
	}
	archive := tmp.Name()
	tmp.Close()

	c, err := bkclient.New(ctx, o.addr)
	if err != nil {
		return archive, fmt.Errorf("connect to buildkitd at %s: %w", o.addr, err)
	}
	defer c.Close()

	display, err := progressui.NewDisplay(o.stderr, o.mode)
	if err != nil {
		return archive, err
	}
	ch := make(chan *bkclient.SolveStatus)
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		_, err := c.Build(ctx, bkclient.SolveOpt{
			LocalMounts:   mounts,
			FrontendAttrs: o.attrs,
			Session:       o.session,
			CacheImports:  o.cacheImports,
			CacheExports:  o.cacheExports,
			Exports: []bkclient.ExportEntry{{
				Type: bkclient.ExporterOCI,
				Output: func(map[string]string) (io.WriteCloser, error) {
					return os.OpenFile(archive, os.O_WRONLY|os.O_TRUNC, 0o600)
				},
			}},
		}, "blockfile", frontend.BuildWithStore(o.verifier), ch)
		return err
	})
	eg.Go(func() error {
		// The display must drain ch even after an error, or Build blocks.
		_, err := display.UpdateFrom(context.WithoutCancel(ctx), ch)
		return err
	})
	if err := eg.Wait(); err != nil {
		return archive, fmt.Errorf("build: %w", err)
	}
	return archive, nil
}

// csvFields splits a buildx-style value (key=value pairs, comma separated,
// quoted with " where a value holds a comma) into a map with lower-case keys.
// A field without "=" is returned under "".
func csvFields(flag, v string) (map[string]string, error) {
	r := csv.NewReader(strings.NewReader(v))
	fields, err := r.Read()
	if err != nil {
		return nil, usageError{fmt.Errorf("%s %q: %w", flag, v, err)}
	}
	m := map[string]string{}
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			if _, dup := m[""]; dup {
				return nil, usageError{fmt.Errorf("%s %q: want key=value fields", flag, v)}
			}
			m[""] = f
			continue
		}
		m[strings.ToLower(strings.TrimSpace(k))] = val
	}
	return m, nil
}

// parseCacheEntries parses --cache-from / --cache-to as buildx does: CSV
// fields with a type (registry when only a reference is given); every other
// field is passed to BuildKit's cache backend unchanged.
func parseCacheEntries(flag string, vals []string, export bool) ([]bkclient.CacheOptionsEntry, error) {
	var out []bkclient.CacheOptionsEntry
	for _, v := range vals {
		m, err := csvFields(flag, v)
		if err != nil {
			return nil, err
		}
		if ref, ok := m[""]; ok {
			if len(m) > 1 {
				return nil, usageError{fmt.Errorf("%s %q: a bare reference takes no other fields", flag, v)}
			}
			m = map[string]string{"type": "registry", "ref": ref}
		}
		typ := m["type"]
		delete(m, "type")
		if typ == "" {
			return nil, usageError{fmt.Errorf("%s %q: want type=registry|local|inline|gha|s3|azblob,...", flag, v)}
		}
		switch typ {
		case "registry":
			if m["ref"] == "" {
				return nil, usageError{fmt.Errorf("%s %q: type=registry needs ref=REF", flag, v)}
			}
		case "local":
			key := "src"
			if export {
				key = "dest"
			}
			if m[key] == "" {
				return nil, usageError{fmt.Errorf("%s %q: type=local needs %s=DIR", flag, v, key)}
			}
		}
		out = append(out, bkclient.CacheOptionsEntry{Type: typ, Attrs: m})
	}
	return out, nil
}

// secretsAttachable parses --secret as buildx does: id=ID[,src|source=FILE]
// or [type=env,]id=ID,env=VAR; with only an id, the environment variable of
// that name if set, else the file of that name.
func secretsAttachable(vals []string) (session.Attachable, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	var srcs []secretsprovider.Source
	for _, v := range vals {
		m, err := csvFields("--secret", v)
		if err != nil {
			return nil, err
		}
		s := secretsprovider.Source{ID: m["id"], FilePath: m["src"], Env: m["env"]}
		if s.FilePath == "" {
			s.FilePath = m["source"]
		}
		if _, ok := m[""]; ok || s.ID == "" {
			return nil, usageError{fmt.Errorf("--secret %q: want id=ID[,src=FILE] or id=ID,env=VAR", v)}
		}
		switch m["type"] {
		case "", "file":
		case "env":
			if s.Env == "" {
				s.Env, s.FilePath = s.FilePath, ""
			}
		default:
			return nil, usageError{fmt.Errorf("--secret %q: type %q: want file or env", v, m["type"])}
		}
		srcs = append(srcs, s)
	}
	store, err := secretsprovider.NewStore(srcs)
	if err != nil {
		return nil, fmt.Errorf("--secret: %w", err)
	}
	return secretsprovider.NewSecretProvider(store), nil
}

// sshAttachable parses --ssh as buildx does: default (the agent at
// $SSH_AUTH_SOCK) or ID=SOCKET or ID=KEY[,KEY...].
func sshAttachable(vals []string) (session.Attachable, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	var confs []sshprovider.AgentConfig
	for _, v := range vals {
		id, paths, _ := strings.Cut(v, "=")
		if id == "" {
			return nil, usageError{fmt.Errorf("--ssh %q: want default|ID[=SOCKET|KEY[,KEY]]", v)}
		}
		c := sshprovider.AgentConfig{ID: id}
		if paths != "" {
			c.Paths = strings.Split(paths, ",")
		}
		confs = append(confs, c)
	}
	a, err := sshprovider.NewSSHAgentProvider(confs)
	if err != nil {
		return nil, fmt.Errorf("--ssh: %w", err)
	}
	return a, nil
}

// dockerAuthAttachable gives BuildKit the registry credentials, as buildx
// does: from authFile (--authfile, else $REGISTRY_AUTH_FILE, a docker
// config.json), else the docker config and its credential helpers.
func dockerAuthAttachable(authFile string, stderr io.Writer) (session.Attachable, error) {
	if authFile == "" {
		authFile = os.Getenv("REGISTRY_AUTH_FILE")
	}
	var cf *configfile.ConfigFile
	if authFile != "" {
		f, err := os.Open(authFile)
		if err != nil {
			return nil, fmt.Errorf("--authfile: %w", err)
		}
		defer f.Close()
		cf = configfile.New(authFile)
		if err := cf.LoadFromReader(f); err != nil {
			return nil, fmt.Errorf("--authfile %s: %w", authFile, err)
		}
	} else {
		cf = config.LoadDefaultConfigFile(stderr)
	}
	return authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
		AuthConfigProvider: authprovider.LoadAuthConfig(cf),
	}), nil
}
