// Command registry measures blockfile push and pull on the ../shared/bench
// scenario (a Java service image built from real Debian packages and four
// real upgrades of it) against a local distribution registry, next to
// `skopeo copy docker:// oci:` of the same standard images, all in one run,
// and prints a markdown table.
//
//	go run ./integration/bench/registry      # scenario in $BENCH/scenario, default /tmp/bench
//
// Bytes are counted by a reverse proxy in front of the registry (request
// and response bodies), the same way for blockfile and skopeo. The first
// pull goes into an empty store, each upgrade pull into a store that pulled
// v1 just before (untimed; not a copy, whose files a store would hash once
// as new); skopeo's first copy goes to an empty layout, each upgrade
// copy to a copy of the layout holding v1 (skopeo skips layers a layout
// has). Each upgrade is pushed with --delta-from v1 (the v1 -> upgrade
// bundle published beside it) and pulled twice from the same starting
// store: as a store holding v1 does by default (the delta), and with
// --no-deltas (the changed blobs). The upgrade byte bound checked is the
// one of the registry issue: at most 1.5x the v1 -> upgrade bundle + 256
// KiB; the first pull at most 1.02x the standard image. The first pull is
// repeated -rounds times, skopeo and blockfile alternately, and the medians
// are shown; in the same rounds v1 is also pulled without the block map
// (PullOptions.NoBlockMap: the layers read whole are dehydrated by
// inflating their blocks). -ranges=false pulls without Range GETs (one GET
// per block member, then hydration), as before they existed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/blocks/tree"
	"github.com/blockfile/blockfile/integration/benchimg"
)

var variants = []string{"v1", "v2-app", "v2-dep", "v2-jre", "v2-curl"}

var (
	withImport bool
	rounds     int
	useRanges  bool
)

func main() {
	scen := benchimg.DefaultScenario()
	work := flag.String("work", filepath.Join(filepath.Dir(scen.Root), "work-registry"), "scratch directory (emptied first)")
	flag.BoolVar(&useRanges, "ranges", true, "pull through Range GETs of the standard layers (false: one GET per block member)")
	flag.IntVar(&rounds, "rounds", 3, "first pulls of v1 (skopeo, then blockfile, alternately, each into an empty directory); the table shows the median of each")
	flag.BoolVar(&withImport, "import", true, "label the images as a build with IMPORT of /app/libs/ and /app/app.jar records them (every jar a block); false: only files of at least 64 KiB are blocks")
	flag.Parse()
	if err := run(context.Background(), scen, *work); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type counter struct{ up, down atomic.Int64 }

func (c *counter) reset() { c.up.Store(0); c.down.Store(0) }

type countingReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}
func (c countingReader) Close() error { return c.r.Close() }

// startRegistry starts docker-registry on a free port with storage under
// dir, and a counting proxy in front of it; it returns the proxy address.
func startRegistry(dir string, c *counter) (string, func(), error) {
	port := func() (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer l.Close()
		return l.Addr().String(), nil
	}
	addr, err := port()
	if err != nil {
		return "", nil, err
	}
	cfg := filepath.Join(dir, "registry.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "registry"), addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return "", nil, err
	}
	defer logf.Close()
	cmd := exec.Command("docker-registry", "serve", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("docker-registry (apt-get install docker-registry): %w", err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i > 300 {
			stop()
			return "", nil, fmt.Errorf("registry did not start: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	u, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		resp.Body = countingReader{resp.Body, &c.down}
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stop()
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = countingReader{r.Body, &c.up}
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	return l.Addr().String(), func() { srv.Close(); stop() }, nil
}

type row struct {
	name                                 string
	pushT, pullT, blocksT, skopeoT       time.Duration
	pushUp, pullDown, blocksDn, skopeoDn int64
	noMapT                               time.Duration // v1: pull without the block map
	noMapDown                            int64
	dehydrated                           int
	mapped                               bool
	standard, bundleSize                 int64
	present, ranges                      int
	delta                                bool // the pull applied the delta
}

func run(ctx context.Context, scen benchimg.Scenario, work string) error {
	if !scen.Exists() {
		return fmt.Errorf("no scenario at %s (make it with ../shared/bench/make-scenario.sh)", scen.Root)
	}
	if _, err := exec.LookPath("skopeo"); err != nil {
		return fmt.Errorf("skopeo is needed for the baseline: %w", err)
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	var v1Blocks int
	layerDirs := map[string][]string{}
	// 1. Images from the layer directories, exported into one store.
	t0 := time.Now()
	b, err := benchimg.NewBuilder(filepath.Join(work, "layout"))
	if err != nil {
		return err
	}
	for _, v := range variants {
		names, err := scen.Layers(v, "layers")
		if err != nil {
			return err
		}
		var dirs []string
		for _, n := range names {
			dirs = append(dirs, scen.LayerDir(n))
		}
		if _, _, err := b.Image(ctx, v, dirs); err != nil {
			return err
		}
		layerDirs[v] = dirs
	}
	// After every Image call: the builder rewrites index.json from its own
	// list each time.
	for _, v := range variants {
		if withImport {
			if err := addImportLabel(ctx, b.Dir, v, layerDirs[v]); err != nil {
				return err
			}
		}
	}
	src, err := store.Create(filepath.Join(work, "src"))
	if err != nil {
		return err
	}
	for _, v := range variants {
		in, err := transport.ParseSource(ctx, "oci:"+b.Dir+":"+v)
		if err != nil {
			return err
		}
		er, err := image.Export(ctx, src, in, v, image.ExportOptions{})
		in.Close()
		if err != nil {
			return err
		}
		if v == "v1" {
			v1Blocks = er.Blocks
		}
	}
	fmt.Fprintf(os.Stderr, "built and exported %d images in %s\n", len(variants), time.Since(t0).Round(time.Millisecond))

	var c counter
	addr, stop, err := startRegistry(work, &c)
	if err != nil {
		return err
	}
	defer stop()
	reg := transport.Registry{}
	refOf := func(v string) string { return addr + "/bench/app:" + v }

	var rows []row
	site1 := filepath.Join(work, "site-v1")
	layout1 := filepath.Join(work, "skopeo-v1")
	for _, v := range variants {
		r := row{name: v}
		eps, err := reg.PullEndpoints(ctx, refOf(v))
		if err != nil {
			return err
		}
		ref, ropts, conn := eps[0].Ref, eps[0].Options, eps[0].HTTP
		if !useRanges {
			conn = nil
		}
		// Push.
		c.reset()
		t := time.Now()
		po := registry.PushOptions{Remote: ropts, TagChildren: true}
		if v != "v1" {
			po.DeltaFrom = []string{"v1"}
		}
		pr, err := registry.Push(ctx, src, v, ref, po)
		if err != nil {
			return err
		}
		r.pushT, r.pushUp, r.standard = time.Since(t), c.up.Load(), pr.StandardSize

		// The bundle of the same upgrade (the bound of the issue) is the
		// delta push published: bundle.Create --from v1, byte for byte
		// (TestRegistryUpgradeWithinBundle checks they are equal).
		if v != "v1" {
			if len(pr.Deltas) != 1 {
				return fmt.Errorf("%s: push published %d deltas", v, len(pr.Deltas))
			}
			r.bundleSize = pr.Deltas[0].Bundle.Size
		}

		// skopeo copy of the standard image (the tag without --all).
		skopeo := func() error {
			dest := layout1
			if v != "v1" {
				dest = filepath.Join(work, "skopeo-"+v)
				if err := exec.Command("cp", "-a", layout1, dest).Run(); err != nil {
					return err
				}
			} else if err := os.RemoveAll(dest); err != nil {
				return err
			}
			drop()
			c.reset()
			t := time.Now()
			cmd := exec.Command("skopeo", "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false", "docker://"+refOf(v), "oci:"+dest+":"+v)
			cmd.Stderr = os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("skopeo copy %s: %w", v, err)
			}
			r.skopeoT, r.skopeoDn = time.Since(t), c.down.Load()
			return nil
		}

		// blockfile pull: by default (the delta, for an upgrade), then
		// with --no-deltas from the same starting store.
		pull := func(site string, noDeltas, noBlockMap bool) (*registry.PullResult, time.Duration, int64, error) {
			if err := os.RemoveAll(site); err != nil {
				return nil, 0, 0, err
			}
			s, err := store.Create(site)
			if err != nil {
				return nil, 0, 0, err
			}
			if v != "v1" {
				// The store holding v1, as a site has it: pulled (a copy
				// would give every file another identity, and a store hashes
				// a file it has not seen before, once: docs/FORMAT.md 8).
				eps1, err := reg.PullEndpoints(ctx, refOf("v1"))
				if err != nil {
					return nil, 0, 0, err
				}
				if _, err := registry.Pull(ctx, s, eps1[0].Ref, "v1", registry.PullOptions{Remote: eps1[0].Options, HTTP: conn, NoDeltas: true}); err != nil {
					return nil, 0, 0, fmt.Errorf("v1 into %s: %w", site, err)
				}
			}
			drop()
			c.reset()
			t := time.Now()
			res, err := registry.Pull(ctx, s, ref, v, registry.PullOptions{Remote: ropts, HTTP: conn, NoDeltas: noDeltas, NoBlockMap: noBlockMap})
			if err != nil {
				return nil, 0, 0, err
			}
			if res.Standard.Digest != pr.Standard.Digest {
				return nil, 0, 0, fmt.Errorf("%s: pulled %s, pushed %s", v, res.Standard.Digest, pr.Standard.Digest)
			}
			return res, time.Since(t), c.down.Load(), nil
		}
		site := site1
		if v != "v1" {
			site = filepath.Join(work, "site-"+v)
		}
		// The first pull: rounds times, skopeo and blockfile alternately,
		// so both see the same machine load; the medians are shown.
		n := 1
		if v == "v1" {
			n = max(rounds, 1)
		}
		// v1 is also pulled without the block map (layers read whole
		// dehydrated by inflating their blocks), in the same rounds.
		var skT, plT, nmT []time.Duration
		for i := range n {
			if err := skopeo(); err != nil {
				return err
			}
			res, d, down, err := pull(site, false, false)
			if err != nil {
				return err
			}
			skT, plT = append(skT, r.skopeoT), append(plT, d)
			r.pullDown, r.present, r.delta, r.ranges = down, res.Present.Blobs, res.Delta != nil, res.Ranges
			r.dehydrated, r.mapped = res.Dehydrated, res.BlockMap != nil
			if v == "v1" {
				nres, nd, ndown, err := pull(site, false, true)
				if err != nil {
					return err
				}
				nmT, r.noMapDown = append(nmT, nd), ndown
				if nres.BlockMap != nil {
					return fmt.Errorf("%s: pull without the block map used %s", v, nres.BlockMap.Digest)
				}
			}
			if n > 1 {
				fmt.Fprintf(os.Stderr, "%s round %d: skopeo %s, pull %s (without the block map %s)\n", v, i+1, r.skopeoT.Round(time.Millisecond), d.Round(time.Millisecond), nmT[len(nmT)-1].Round(time.Millisecond))
			}
		}
		r.skopeoT, r.pullT = median(skT), median(plT)
		if len(nmT) > 0 {
			r.noMapT = median(nmT)
		}
		if v != "v1" {
			if _, r.blocksT, r.blocksDn, err = pull(site+"-blocks", true, false); err != nil {
				return err
			}
		}
		rows = append(rows, r)
		fmt.Fprintf(os.Stderr, "%s: push %s, pull %s (delta %v; blocks %s), skopeo %s\n", v, r.pushT.Round(time.Millisecond), r.pullT.Round(time.Millisecond), r.delta, r.blocksT.Round(time.Millisecond), r.skopeoT.Round(time.Millisecond))
	}

	load, _ := os.ReadFile("/proc/loadavg")
	lf := strings.Fields(string(load))
	fmt.Printf("IMPORT label: %v; %d blocks in v1; Range GETs: %v; first pull: median of %d rounds; load average at the end: %s\n\n", withImport, v1Blocks, useRanges, max(rounds, 1), strings.Join(lf[:min(3, len(lf))], " "))
	fmt.Println("| image | push s | push MB up | pull s | pull MB down | pull ranges | delta used | pull --no-deltas s | --no-deltas MB down | skopeo copy s | skopeo MB down | pull/skopeo time | pull/skopeo bytes | bound | within | --no-deltas within |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		bound := 1.02 * float64(r.standard)
		what := fmt.Sprintf("1.02x standard %.1f MB", mb(r.standard))
		blocks := "-"
		if r.bundleSize > 0 {
			bound = 1.5*float64(r.bundleSize) + 256<<10
			what = fmt.Sprintf("1.5x bundle %.2f MB + 256 KiB", mb(r.bundleSize))
			blocks = yes(float64(r.blocksDn) <= bound)
		}
		fmt.Printf("| %s | %.2f | %.2f | %.2f | %.2f | %d | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %s | %s | %s |\n", r.name,
			r.pushT.Seconds(), mb(r.pushUp), r.pullT.Seconds(), mb(r.pullDown), r.ranges, map[bool]string{true: "yes", false: "no"}[r.delta],
			r.blocksT.Seconds(), mb(r.blocksDn), r.skopeoT.Seconds(), mb(r.skopeoDn),
			r.pullT.Seconds()/r.skopeoT.Seconds(), float64(r.pullDown)/float64(r.skopeoDn), what, yes(float64(r.pullDown) <= bound), blocks)
	}
	fmt.Println("\npush s and MB up of an upgrade include making and uploading its delta (the v1 -> upgrade bundle).")
	for _, r := range rows {
		if r.noMapT > 0 {
			fmt.Printf("%s first pull: %d layer(s) read whole, block map used: %v; %.2f s (%.2fx skopeo); without the block map (inflating their blocks) %.2f s (%.2fx skopeo), %.2f MB down\n",
				r.name, r.dehydrated, r.mapped, r.pullT.Seconds(), r.pullT.Seconds()/r.skopeoT.Seconds(), r.noMapT.Seconds(), r.noMapT.Seconds()/r.skopeoT.Seconds(), mb(r.noMapDown))
		}
	}
	return nil
}

// drop writes dirty pages back, so one step's writeback does not land in
// the next one's time.
func drop() { _ = exec.Command("sync").Run() }

func mb(n int64) float64 { return float64(n) / 1e6 }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

// addImportLabel rewrites the image tagged v in the layout at dir with the
// dev.blockfile.imports label a build with IMPORT of /app/libs/ (a tree
// block) and /app/app.jar records, as the bundles bench does.
func addImportLabel(ctx context.Context, dir, v string, layerDirs []string) error {
	m := map[string]string{}
	for _, ld := range layerDirs {
		if libs := filepath.Join(ld, "app", "libs"); isDir(libs) {
			doc, _, err := tree.Build(ctx, libs, func(_ context.Context, p string) (blocks.Ref, error) {
				data, err := os.ReadFile(p)
				if err != nil {
					return blocks.Ref{}, err
				}
				return blocks.Ref{Digest: digest.FromBytes(data), Size: int64(len(data))}, nil
			})
			if err != nil {
				return err
			}
			m["/app/libs/"] = tree.DocRef(doc).Digest.String()
		}
		if data, err := os.ReadFile(filepath.Join(ld, "app", "app.jar")); err == nil {
			m["/app/app.jar"] = digest.FromBytes(data).String()
		}
	}
	label, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var idx ocispec.Index
	if err := readJSON(filepath.Join(dir, "index.json"), &idx); err != nil {
		return err
	}
	for i, e := range idx.Manifests {
		if e.Annotations[ocispec.AnnotationRefName] != v {
			continue
		}
		var man ocispec.Manifest
		if err := readJSON(blobPath(dir, e.Digest), &man); err != nil {
			return err
		}
		var cfg ocispec.Image
		if err := readJSON(blobPath(dir, man.Config.Digest), &cfg); err != nil {
			return err
		}
		if cfg.Config.Labels == nil {
			cfg.Config.Labels = map[string]string{}
		}
		cfg.Config.Labels[blocks.LabelImports] = string(label)
		if man.Config, err = putJSON(dir, man.Config.MediaType, cfg); err != nil {
			return err
		}
		md, err := putJSON(dir, e.MediaType, man)
		if err != nil {
			return err
		}
		md.Annotations = e.Annotations
		idx.Manifests[i] = md
	}
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "index.json"), data, 0o644)
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func readJSON(p string, v any) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func putJSON(dir, mt string, v any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
	return d, os.WriteFile(blobPath(dir, d.Digest), data, 0o644)
}
