// Command serve measures `blockfile serve` on the ../shared/bench v1 image
// (a Java service image built from real Debian packages): pulls through
// serve from a store that holds only the blocked form, cold (every layer
// hydrated on demand) and warm, next to the same image pulled from a plain
// distribution registry (Debian's docker-registry, filesystem storage) on
// the same machine, in one run; and the disk each side needs.
//
//	go run ./integration/bench/serve            # scenario in $BENCH/scenario, default /tmp/bench
//
// Two clients pull: a Go client (go-containerregistry, layers fetched 3 at
// a time as containerd does, every byte digest-checked, nothing written),
// which shows what the server sustains, and `skopeo copy` to an OCI layout,
// which is what a node's pull costs end to end. Rates are MB/s of the
// image's compressed layer bytes (1 MB = 10^6 bytes); each figure is the
// median of -runs pulls.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/serve"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/integration/benchimg"
)

func main() {
	variant := flag.String("variant", "v1", "scenario variant")
	work := flag.String("work", "", "work directory (default $BENCH/work-serve; emptied first)")
	runs := flag.Int("runs", 3, "pulls per client and figure (the median is reported)")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the measured pulls to this file")
	flag.Parse()
	if err := run(context.Background(), *variant, *work, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench-serve:", err)
		os.Exit(1)
	}
}

const repo = "bench/app"

// cpuProfile, if set, receives a CPU profile of the measured pulls (the
// servers run in this process, so it shows where serve spends its time).
var cpuProfile string

func run(ctx context.Context, variant, work string, runs int) error {
	sc := benchimg.DefaultScenario()
	if !sc.Exists() {
		return fmt.Errorf("no scenario at %s: run ../shared/bench/make-scenario.sh (as root) first", sc.Root)
	}
	if work == "" {
		work = filepath.Join(filepath.Dir(sc.Root), "work-serve")
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	names, err := sc.Layers(variant, "layers")
	if err != nil {
		return err
	}
	var dirs []string
	for _, n := range names {
		dirs = append(dirs, sc.LayerDir(n))
	}
	b, err := benchimg.NewBuilder(filepath.Join(work, "src"))
	if err != nil {
		return err
	}
	if _, _, err := b.Image(ctx, variant, dirs); err != nil {
		return err
	}

	// The site store: export, then drop every standard layer that has a
	// blocked form (what `bundle apply --materialize=false` leaves).
	s, err := store.Create(filepath.Join(work, "store"))
	if err != nil {
		return err
	}
	src, err := transport.ParseSource(ctx, "oci:"+b.Dir+":"+variant)
	if err != nil {
		return err
	}
	storeName := repo + ":" + variant
	res, err := image.Export(ctx, s, src, storeName, image.ExportOptions{TempDir: work})
	src.Close()
	if err != nil {
		return err
	}
	// The standard image, for the plain registry: exactly the bytes serve
	// produces (same manifest digest).
	std := filepath.Join(work, "standard")
	sink, err := transport.ParseSink(ctx, "oci:"+std+":"+variant)
	if err != nil {
		return err
	}
	if _, err := image.Hydrate(ctx, s, storeName, sink, image.HydrateOptions{}); err != nil {
		return err
	}
	img, err := image.Resolve(ctx, s, storeName)
	if err != nil {
		return err
	}
	var layerBytes int64
	var hydrated int
	for _, l := range img.Manifests[0].Layers {
		layerBytes += l.Standard.Size
		if l.HasBlocks() {
			hydrated++
			if err := os.Remove(s.BlobPath(l.Standard.Digest)); err != nil {
				return err
			}
		}
	}
	fmt.Printf("image %s: %d layers (%d with blocks, hydrated on demand), %.1f MB compressed; standard manifest %s\n\n",
		variant, len(img.Manifests[0].Layers), hydrated, mb(layerBytes), res.Standard.Digest)

	reg, stopReg, err := startRegistry(ctx, filepath.Join(work, "registry"))
	if err != nil {
		return err
	}
	defer stopReg()
	if out, err := exec.CommandContext(ctx, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+std+":"+variant, "docker://"+reg+"/"+repo+":"+variant).CombinedOutput(); err != nil {
		return fmt.Errorf("skopeo copy to the registry: %w: %s", err, out)
	}

	// Every figure is a median of pulls interleaved with the others' (one
	// pull of each, then again), so that the machine's load, which varies,
	// weighs on all of them alike.
	type target struct {
		what   string
		start  func() (addr string, stop func(), err error)
		gs, ss []time.Duration
	}
	fixed := func(addr string) func() (string, func(), error) {
		return func() (string, func(), error) { return addr, func() {}, nil }
	}
	// Cold: a new server for each pull, so every layer with blocks is
	// hydrated while it is sent.
	var coldHydrations int64
	cold := func() (string, func(), error) {
		sv, addr, stop, err := startServe(s, serve.Options{})
		return addr, func() { stop(); coldHydrations += sv.Hydrations() }, err
	}
	// Warm: one server; a first pull hydrates, the measured ones find the
	// layers hydrated (kept a minute after their last reader by default;
	// the pulls come sooner).
	warm, warmAddr, stopWarm, err := startServe(s, serve.Options{})
	if err != nil {
		return err
	}
	defer stopWarm()
	// Kept: --keep-hydrated; a first pull hydrates into the store, the
	// measured ones read the store's files.
	// (on a copy of the store: the cold servers must find no layer kept)
	keptDir := filepath.Join(work, "store-kept")
	if out, err := exec.Command("cp", "-a", s.Root(), keptDir).CombinedOutput(); err != nil {
		return fmt.Errorf("copy the store: %w: %s", err, out)
	}
	ks, err := store.Open(keptDir)
	if err != nil {
		return err
	}
	kept, keptAddr, stopKept, err := startServe(ks, serve.Options{KeepHydrated: true})
	if err != nil {
		return err
	}
	defer stopKept()
	for _, a := range []string{warmAddr, keptAddr} {
		if err := goPull(ctx, a+"/"+repo+":"+variant, res.Standard.Digest.String()); err != nil {
			return err
		}
	}
	kept.Wait()
	targets := []*target{
		{what: "plain registry (distribution 2.8, filesystem)", start: fixed(reg)},
		{what: "serve, cold (blocked form only: hydrated on demand)", start: cold},
		{what: "serve, warm (hydrated less than a minute ago)", start: fixed(warmAddr)},
		{what: "serve --keep-hydrated, warm (layers kept in the store)", start: fixed(keptAddr)},
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer f.Close()
	}
	for i := 0; i < runs; i++ {
		for _, client := range []string{"go", "skopeo"} {
			for _, tg := range targets {
				addr, stop, err := tg.start()
				if err != nil {
					return err
				}
				ref := addr + "/" + repo + ":" + variant
				t0 := time.Now()
				if client == "go" {
					err = goPull(ctx, ref, res.Standard.Digest.String())
				} else {
					err = skopeoPull(ctx, ref, filepath.Join(work, "pulled"), res.Standard.Digest.String())
				}
				d := time.Since(t0)
				stop()
				if err != nil {
					return fmt.Errorf("%s, %s client: %w", tg.what, client, err)
				}
				if client == "go" {
					tg.gs = append(tg.gs, d)
				} else {
					tg.ss = append(tg.ss, d)
				}
			}
		}
	}
	pprof.StopCPUProfile()
	if want := int64(2 * runs * hydrated); coldHydrations != want {
		return fmt.Errorf("cold pulls hydrated %d layers, want %d", coldHydrations, want)
	}
	if n := warm.Hydrations(); n != int64(hydrated) {
		return fmt.Errorf("warm server hydrated %d times, want %d (once per layer)", n, hydrated)
	}
	if n := kept.Hydrations(); n != int64(hydrated) {
		return fmt.Errorf("--keep-hydrated server hydrated %d times, want %d (once per layer)", n, hydrated)
	}
	type row struct {
		what        string
		goS, skopeo time.Duration
	}
	var rows []row
	for _, tg := range targets {
		rows = append(rows, row{tg.what, median(tg.gs), median(tg.ss)})
	}

	base := rows[0]
	fmt.Println("| pull of the v1 image | Go client | vs registry | skopeo copy | vs registry |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Printf("| %s | %.2f s, %.0f MB/s | %.2fx | %.2f s, %.0f MB/s | %.2fx |\n", r.what,
			r.goS.Seconds(), mb(layerBytes)/r.goS.Seconds(), base.goS.Seconds()/r.goS.Seconds(),
			r.skopeo.Seconds(), mb(layerBytes)/r.skopeo.Seconds(), base.skopeo.Seconds()/r.skopeo.Seconds())
	}
	fmt.Printf("\n%d pulls per client and row (median), interleaved; cold pulls hydrated %d layers in all (%d per pull); load average at the end: %s\n\n", runs, coldHydrations, hydrated, loadavg())

	// Disk: the site store holds the blocked form only (the kept pulls
	// went to the copy).
	os.RemoveAll(keptDir)
	siteBytes, err := duBytes(s.Root())
	if err != nil {
		return err
	}
	regBytes, err := duBytes(filepath.Join(work, "registry"))
	if err != nil {
		return err
	}
	// The same with v1 and its four upgrades under five tags, as a site
	// that received them holds them.
	keptLayers := map[string]int64{}
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() {
			keptLayers[l.Standard.Digest.String()] = l.Standard.Size
		}
	}
	for _, v := range []string{"v2-app", "v2-dep", "v2-jre", "v2-curl"} {
		n, err := sc.Layers(v, "layers")
		if err != nil {
			return err
		}
		var vd []string
		for _, x := range n {
			vd = append(vd, sc.LayerDir(x))
		}
		if _, _, err := b.Image(ctx, v, vd); err != nil {
			return err
		}
		if err := addVariant(ctx, s, b.Dir, v, filepath.Join(work, "standard-"+v), reg, keptLayers); err != nil {
			return fmt.Errorf("%s: %w", v, err)
		}
	}
	var stdKept int64
	for _, n := range keptLayers {
		stdKept += n
	}
	allSite, err := duBytes(s.Root())
	if err != nil {
		return err
	}
	allReg, err := duBytes(filepath.Join(work, "registry"))
	if err != nil {
		return err
	}
	fmt.Println("| disk | plain registry (standard images) | blockfile store, --materialize=false | ratio | store with hydrated layers kept | ratio |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	fmt.Printf("| v1 | %.1f MB | %.1f MB | %.2fx | %.1f MB | %.2fx |\n", mb(regBytes), mb(siteBytes), float64(siteBytes)/float64(regBytes),
		mb(siteBytes+hydratedBytes(img)), float64(siteBytes+hydratedBytes(img))/float64(regBytes))
	fmt.Printf("| v1 + 4 upgrades (5 tags) | %.1f MB | %.1f MB | %.2fx | %.1f MB | %.2fx |\n", mb(allReg), mb(allSite), float64(allSite)/float64(allReg),
		mb(allSite+stdKept), float64(allSite+stdKept)/float64(allReg))
	fmt.Println("\n(\"kept\" adds the standard layers with blocks, as after pulls of every tag with --keep-hydrated; the store's own figures are du of its directory.)")
	return nil
}

// addVariant exports variant from the layout at src into s (blocked form
// only, standard layers with blocks dropped), pushes its standard image to
// the registry, and adds its standard layers with blocks to kept (digest ->
// size: layers shared with another tag count once).
func addVariant(ctx context.Context, s *store.Store, src, variant, std, reg string, kept map[string]int64) error {
	in, err := transport.ParseSource(ctx, "oci:"+src+":"+variant)
	if err != nil {
		return err
	}
	name := repo + ":" + variant
	_, err = image.Export(ctx, s, in, name, image.ExportOptions{TempDir: filepath.Dir(std)})
	in.Close()
	if err != nil {
		return err
	}
	sink, err := transport.ParseSink(ctx, "oci:"+std+":"+variant)
	if err != nil {
		return err
	}
	if _, err := image.Hydrate(ctx, s, name, sink, image.HydrateOptions{}); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+std+":"+variant, "docker://"+reg+"/"+repo+":"+variant).CombinedOutput(); err != nil {
		return fmt.Errorf("skopeo copy to the registry: %w: %s", err, out)
	}
	os.RemoveAll(std)
	img, err := image.Resolve(ctx, s, name)
	if err != nil {
		return err
	}
	for _, l := range img.Manifests[0].Layers {
		if !l.HasBlocks() {
			continue
		}
		kept[l.Standard.Digest.String()] = l.Standard.Size
		if err := os.Remove(s.BlobPath(l.Standard.Digest)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

func hydratedBytes(img *image.Image) int64 {
	var n int64
	for _, l := range img.Manifests[0].Layers {
		if l.HasBlocks() {
			n += l.Standard.Size
		}
	}
	return n
}

// startServe serves s on a free loopback port.
func startServe(s *store.Store, opts serve.Options) (*serve.Server, string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	sv := serve.New(ctx, s, opts)
	hs := &http.Server{Handler: sv}
	go hs.Serve(ln)
	return sv, ln.Addr().String(), func() { hs.Close(); cancel(); sv.Wait() }, nil
}

// startRegistry runs Debian's docker-registry (distribution 2.8) with
// filesystem storage under dir on a free loopback port.
func startRegistry(ctx context.Context, dir string) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(filepath.Dir(dir), "registry.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", dir, addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	cmd := exec.Command("docker-registry", "serve", cfg)
	logf, err := os.Create(filepath.Join(filepath.Dir(dir), "registry.log"))
	if err != nil {
		return "", nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("docker-registry (apt-get install docker-registry): %w", err)
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, errors.New("docker-registry did not start")
}

// goPull pulls ref for linux/amd64 with go-containerregistry, 3 layers at a
// time, checking every digest, and keeps nothing.
func goPull(ctx context.Context, ref, want string) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return err
	}
	if d, err := img.Digest(); err != nil || d.String() != want {
		return fmt.Errorf("manifest %s (%v), want %s", d, err, want)
	}
	if _, err := img.RawConfigFile(); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(3)
	for _, l := range layers {
		g.Go(func() error {
			if gctx.Err() != nil {
				return gctx.Err()
			}
			rc, err := l.Compressed() // digest checked at EOF
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		})
	}
	return g.Wait()
}

// skopeoPull copies ref to a fresh OCI layout at dir and checks the
// manifest digest.
func skopeoPull(ctx context.Context, ref, dir, want string) error {
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	out, err := exec.CommandContext(ctx, "skopeo", "copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64", "docker://"+ref, "oci:"+dir+":x").CombinedOutput()
	if err != nil {
		return fmt.Errorf("skopeo copy: %w: %s", err, out)
	}
	idx, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return err
	}
	if !strings.Contains(string(idx), want) {
		return fmt.Errorf("skopeo copied %s, want manifest %s", idx, want)
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// duBytes is the disk used by the files under dir (du --apparent-size would
// count sparse holes; this counts allocated blocks, as du does).
func duBytes(dir string) (int64, error) {
	out, err := exec.Command("du", "-sk", dir).Output()
	if err != nil {
		return 0, fmt.Errorf("du %s: %w", dir, err)
	}
	var kib int64
	if _, err := fmt.Sscan(string(out), &kib); err != nil {
		return 0, err
	}
	return kib << 10, nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func mb(n int64) float64 { return float64(n) / 1e6 }
