// Command bundles measures offline bundles on the ../shared/bench scenario
// (a Java service image built from real Debian packages and four real
// upgrades of it) next to today's ways of shipping the same upgrades, all
// computed in one run on the same trees, and prints a markdown table.
//
//	go run ./integration/bench/bundles            # scenario in $BENCH/scenario, default /tmp/bench
//
// Baselines: the whole image as docker save ships it (gzip -6 layers +
// config), the 5-layer split and the Jib-style split (gzip -6 of the layers
// that changed), and the ideal for per-file content addressing (gzip -6 of
// each file whose sha256 is new, compressed alone). Layers are built here
// from the scenario's layer directories: tar in lexical order, then GNU
// gzip -6 -n. Apply of the full v1 bundle is timed next to extracting and
// repacking the same image with GNU tar and gzip.
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/blocks/tree"
	"github.com/blockfile/blockfile/integration/benchimg"
)

// minBlockSize is the export option under test (-min-block-size).
var minBlockSize int64

var variants = []string{"v1", "v2-app", "v2-dep", "v2-jre", "v2-curl"}

func main() {
	benchDir := os.Getenv("BENCH")
	if benchDir == "" {
		benchDir = "/tmp/bench"
	}
	work := flag.String("work", filepath.Join(benchDir, "work-bundles"), "scratch directory (emptied first)")
	flag.Int64Var(&minBlockSize, "min-block-size", image.DefaultMinBlockSize, "export --min-block-size, in bytes")
	only := flag.String("only", "", "comma-separated upgrades to measure besides v1 (default: all)")
	flag.Parse()
	if *only != "" {
		variants = append([]string{"v1"}, strings.Split(*only, ",")...)
	}
	if err := run(context.Background(), filepath.Join(benchDir, "scenario"), *work); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type layer struct {
	name    string
	desc    ocispec.Descriptor // tar+gzip -6
	diffID  digest.Digest
	tarSize int64
}

type bench struct {
	scen, work string
	layout     string
	layers     map[string]*layer
}

func run(ctx context.Context, scen, work string) error {
	if _, err := os.Stat(filepath.Join(scen, "images", "v1", "layers")); err != nil {
		return fmt.Errorf("no scenario at %s (make it with ../shared/bench/make-scenario.sh): %w", scen, err)
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	b := &bench{scen: scen, work: work, layout: filepath.Join(work, "layout"), layers: map[string]*layer{}}
	if err := os.MkdirAll(filepath.Join(b.layout, "blobs", "sha256"), 0o755); err != nil {
		return err
	}

	// 1. Images from the layer directories.
	t0 := time.Now()
	split, jib := map[string][]*layer{}, map[string][]*layer{}
	var entries []ocispec.Descriptor
	for _, v := range variants {
		for _, set := range []struct {
			file string
			into map[string][]*layer
		}{{"layers", split}, {"jib-layers", jib}} {
			names, err := readLines(filepath.Join(scen, "images", v, set.file))
			if err != nil {
				return err
			}
			for _, n := range names {
				l, err := b.layer(n)
				if err != nil {
					return err
				}
				set.into[v] = append(set.into[v], l)
			}
		}
		m, err := b.image(split[v], nil)
		if err != nil {
			return err
		}
		m.Annotations = map[string]string{ocispec.AnnotationRefName: v}
		entries = append(entries, m)
		// The same image as a Blockfile build with IMPORT of the jars would
		// record it: the label that makes export turn them into blocks
		// whatever their size.
		imports, err := b.importsLabel(ctx, split[v])
		if err != nil {
			return err
		}
		m, err = b.image(split[v], map[string]string{blocks.LabelImports: imports})
		if err != nil {
			return err
		}
		m.Annotations = map[string]string{ocispec.AnnotationRefName: imported(v)}
		entries = append(entries, m)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: entries}
	idx.SchemaVersion = 2
	if err := writeJSONFile(filepath.Join(b.layout, "index.json"), idx); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.layout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "built %d layers (tar + gzip -6) in %s\n", len(b.layers), time.Since(t0).Round(time.Millisecond))

	// 2. Export every variant into one store.
	s, err := store.Create(filepath.Join(work, "store"))
	if err != nil {
		return err
	}
	for _, v := range append(append([]string{}, variants...), withImport(variants)...) {
		t := time.Now()
		src, err := transport.ParseSource(ctx, "oci:"+b.layout+":"+v)
		if err != nil {
			return err
		}
		res, err := image.Export(ctx, s, src, v, image.ExportOptions{MinBlockSize: minBlockSize})
		src.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "exported %s: %d blocks in %s\n", v, res.Blocks, time.Since(t).Round(time.Millisecond))
	}

	// 3. Bundles, and the baselines on the same trees.
	type row struct {
		name                                                      string
		bundle, whole, noDeltas, plain, save, split, jib, perFile int64
		xdelta                                                    int64
		create                                                    time.Duration
	}
	var rows []row
	v1Files, err := b.fileHashes(split["v1"])
	if err != nil {
		return err
	}
	var lastCreate time.Duration
	bundleSize := func(v, base string, mode string) (int64, error) {
		out := filepath.Join(work, v+".bundle")
		if mode != "" {
			out = filepath.Join(work, v+"."+mode+".bundle")
		}
		opts := bundle.CreateOptions{From: []string{base}, NoPatches: mode == "no-patches", NoDeltas: mode == "no-deltas"}
		if v == base {
			opts = bundle.CreateOptions{Full: true}
		}
		t := time.Now()
		if _, err := bundle.Create(ctx, s, []string{v}, out, opts); err != nil {
			return 0, err
		}
		lastCreate = time.Since(t)
		fi, err := os.Stat(out)
		if err != nil {
			return 0, err
		}
		return fi.Size(), nil
	}
	for _, v := range variants {
		plain, err := bundleSize(v, "v1", "")
		if err != nil {
			return err
		}
		withIm, err := bundleSize(imported(v), imported("v1"), "")
		if err != nil {
			return err
		}
		created := lastCreate
		whole, err := bundleSize(imported(v), imported("v1"), "no-patches")
		if err != nil {
			return err
		}
		noDeltas, err := bundleSize(imported(v), imported("v1"), "no-deltas")
		if err != nil {
			return err
		}
		r := row{name: v, bundle: withIm, whole: whole, noDeltas: noDeltas, plain: plain, save: b.saveSize(split[v]), create: created}
		if v != "v1" {
			if r.xdelta, err = b.xdelta(split["v1"], split[v]); err != nil {
				return err
			}
		}
		base := map[string]bool{}
		var have map[string]bool
		if v != "v1" {
			for _, l := range split["v1"] {
				base[l.name] = true
			}
			for _, l := range jib["v1"] {
				base[l.name] = true
			}
			have = v1Files
		}
		r.split = b.changedSize(split[v], base)
		r.jib = b.changedSize(jib[v], base)
		if r.perFile, err = b.perFileIdeal(split[v], have); err != nil {
			return err
		}
		rows = append(rows, r)
	}

	// 4. Apply of the full v1 bundle vs extract-and-repack of the same image.
	site, err := store.Create(filepath.Join(work, "site"))
	if err != nil {
		return err
	}
	lean, err := store.Create(filepath.Join(work, "site-lean"))
	if err != nil {
		return err
	}
	t := time.Now()
	if _, err := bundle.Apply(ctx, lean, filepath.Join(work, "v1.bundle"), bundle.ApplyOptions{NoMaterialize: true}); err != nil {
		return err
	}
	leanTime := time.Since(t)
	t = time.Now()
	res, err := bundle.Apply(ctx, site, filepath.Join(work, "v1.bundle"), bundle.ApplyOptions{})
	if err != nil {
		return err
	}
	applyTime := time.Since(t)
	// Apply has checked that hydration reproduced the standard digest.
	fmt.Fprintf(os.Stderr, "applied v1: %s, %d blobs\n", res.Images[0].Standard.Digest, res.Ingested.Blobs)
	t = time.Now()
	archive := filepath.Join(work, "v1-applied.tar")
	if _, err := bundle.Apply(ctx, site, filepath.Join(work, "v1.bundle"), bundle.ApplyOptions{Outputs: []string{"oci-archive:" + archive}}); err != nil {
		return err
	}
	archiveTime := time.Since(t)
	repack, err := b.extractRepack(split["v1"])
	if err != nil {
		return err
	}

	// 4b. Each upgrade applied to the site that holds v1, next to extracting
	// and repacking the layers it changes (what the site's admins do by hand).
	type upRow struct {
		name          string
		apply, repack time.Duration
	}
	var ups []upRow
	inV1 := map[string]bool{}
	for _, l := range split["v1"] {
		inV1[l.name] = true
	}
	for _, v := range variants[1:] {
		t := time.Now()
		if _, err := bundle.Apply(ctx, site, filepath.Join(work, v+".bundle"), bundle.ApplyOptions{}); err != nil {
			return fmt.Errorf("apply %s: %w", v, err)
		}
		r := upRow{name: v, apply: time.Since(t)}
		var changed []*layer
		for _, l := range split[v] {
			if !inV1[l.name] {
				changed = append(changed, l)
			}
		}
		if r.repack, err = b.extractRepack(changed); err != nil {
			return err
		}
		ups = append(ups, r)
	}

	stdSize, err := standardSize(ctx, s, "v1")
	if err != nil {
		return err
	}

	// 5. The tables.
	mb := func(n int64) string { return fmt.Sprintf("%.2f", float64(n)/1e6) }
	fmt.Println("| upgrade | blockfile bundle (jars IMPORTed) | same, --no-deltas | same, --no-patches | blockfile bundle (no IMPORT) | docker save (whole image) | 5-layer split | Jib-style | ideal per-file | xdelta3 -9 of the changed layers | bundle / (xdelta3 + 32 KiB) | bundle - ideal (KiB) | create, s |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		xd, ratio := "-", "-"
		if r.xdelta > 0 {
			xd = mb(r.xdelta)
			ratio = fmt.Sprintf("%.2f", float64(r.bundle)/float64(r.xdelta+32<<10))
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %+.1f | %.1f |\n", r.name, mb(r.bundle), mb(r.noDeltas), mb(r.whole), mb(r.plain), mb(r.save), mb(r.split), mb(r.jib), mb(r.perFile), xd, ratio, float64(r.bundle-r.perFile)/1024, r.create.Seconds())
	}
	fmt.Printf("\nMB = 10^6 bytes. v1 is a first install (--full); v2-* are bundles --from v1. \"jars IMPORTed\": the image config carries the %s label a Blockfile build with IMPORT of /app/libs/ and /app/app.jar records, so every jar is a block; \"no IMPORT\": only files of at least %d bytes are blocks. v1 bundle / docker save = %.4f (no IMPORT: %.4f).\n\n", blocks.LabelImports, minBlockSize, float64(rows[0].bundle)/float64(rows[0].save), float64(rows[0].plain)/float64(rows[0].save))
	fmt.Println("| operation (full v1 image) | seconds |")
	fmt.Println("|---|---|")
	fmt.Printf("| blockfile bundle apply --materialize=false (verify, ingest, tag) | %.2f |\n", leanTime.Seconds())
	fmt.Printf("| blockfile bundle apply (verify, ingest, tag, hydrate into the store) | %.2f |\n", applyTime.Seconds())
	fmt.Printf("| blockfile bundle apply again, writing an oci-archive | %.2f |\n", archiveTime.Seconds())
	fmt.Printf("| extract and repack (tar -xzf, then tar -cz with gzip -6, per layer) | %.2f |\n", repack.Seconds())
	fmt.Printf("\napply is %.1fx faster than extract-and-repack (%.1fx with --materialize=false).\n", repack.Seconds()/applyTime.Seconds(), repack.Seconds()/leanTime.Seconds())
	fmt.Printf("The standard v1 image (block-framed layers) is %s MB; the v1 bundle is %.4fx of it.\n", mb(stdSize), float64(rows[0].bundle)/float64(stdSize))
	fmt.Println()
	fmt.Println("| upgrade (no IMPORT), at a site holding v1 | blockfile bundle apply, s | extract and repack of the changed layers, s | ratio |")
	fmt.Println("|---|---|---|---|")
	for _, u := range ups {
		fmt.Printf("| %s | %.3f | %.2f | %.0fx |\n", u.name, u.apply.Seconds(), u.repack.Seconds(), u.repack.Seconds()/u.apply.Seconds())
	}
	return nil
}

func readLines(p string) ([]string, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(data)), nil
}

// layer builds (once) the tar+gzip layer of a scenario layer directory.
func (b *bench) layer(name string) (*layer, error) {
	if l, ok := b.layers[name]; ok {
		return l, nil
	}
	dir := filepath.Join(b.scen, "layers", name)
	tmp := filepath.Join(b.work, "layer.tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	gz := exec.Command("gzip", "-6", "-n", "-c")
	blobHash := sha256.New()
	gz.Stdout = io.MultiWriter(f, blobHash)
	gz.Stderr = os.Stderr
	in, err := gz.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := gz.Start(); err != nil {
		return nil, err
	}
	tarHash := sha256.New()
	cw := &counter{}
	bw := bufio.NewWriterSize(in, 1<<20)
	werr := benchimg.WriteTar(context.Background(), dir, io.MultiWriter(bw, tarHash, cw))
	if werr == nil {
		werr = bw.Flush()
	}
	in.Close()
	if err := errors.Join(werr, gz.Wait()); err != nil {
		return nil, fmt.Errorf("layer %s: %w", name, err)
	}
	d := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(blobHash.Sum(nil)))
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(b.layout, "blobs", "sha256", d.Encoded())); err != nil {
		return nil, err
	}
	l := &layer{
		name:    name,
		desc:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: fi.Size()},
		diffID:  digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(tarHash.Sum(nil))),
		tarSize: cw.n,
	}
	b.layers[name] = l
	return l, nil
}

// image writes the config and manifest of an image made of layers.
func (b *bench) image(layers []*layer, labels map[string]string) (ocispec.Descriptor, error) {
	cfg := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config:   ocispec.ImageConfig{Cmd: []string{"java", "-jar", "/app/app.jar"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Labels: labels},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	var descs []ocispec.Descriptor
	for _, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
		descs = append(descs, l.desc)
	}
	cd, err := b.putJSON(ocispec.MediaTypeImageConfig, cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: descs}
	m.SchemaVersion = 2
	return b.putJSON(ocispec.MediaTypeImageManifest, m)
}

func (b *bench) putJSON(mt string, v any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(data), Size: int64(len(data))}
	return d, os.WriteFile(filepath.Join(b.layout, "blobs", "sha256", d.Digest.Encoded()), data, 0o644)
}

func writeJSONFile(p string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

// saveSize is what docker save ships: every layer and the config (the
// manifest and the tar framing are a few KB more, left out).
func (b *bench) saveSize(layers []*layer) int64 {
	var n int64
	for _, l := range layers {
		n += l.desc.Size
	}
	return n + 2000
}

// xdelta is the size of `xdelta3 -9` of each layer of to that differs
// from the layer at the same position of from (uncompressed tars, the
// source window covering the whole old tar), summed: what a binary delta
// of the changed layers ships.
func (b *bench) xdelta(from, to []*layer) (int64, error) {
	var n int64
	for i, l := range to {
		if i < len(from) && from[i].name == l.name {
			continue
		}
		old, cur := filepath.Join(b.work, "xd-old.tar"), filepath.Join(b.work, "xd-new.tar")
		for _, f := range []struct {
			path string
			l    *layer
		}{{old, from[i]}, {cur, l}} {
			w, err := os.Create(f.path)
			if err != nil {
				return 0, err
			}
			bw := bufio.NewWriterSize(w, 1<<20)
			err = benchimg.WriteTar(context.Background(), filepath.Join(b.scen, "layers", f.l.name), bw)
			if err == nil {
				err = bw.Flush()
			}
			if err := errors.Join(err, w.Close()); err != nil {
				return 0, err
			}
		}
		out := filepath.Join(b.work, "xd.delta")
		window := int64(1 << 20)
		for window < from[i].tarSize {
			window *= 2
		}
		cmd := exec.Command("xdelta3", "-9", "-f", "-e", "-B", fmt.Sprint(window), "-s", old, cur, out)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("xdelta3 %s -> %s: %w", from[i].name, l.name, err)
		}
		fi, err := os.Stat(out)
		if err != nil {
			return 0, err
		}
		n += fi.Size()
		os.Remove(old)
		os.Remove(cur)
		os.Remove(out)
	}
	return n, nil
}

// changedSize is the bytes of the layers not in base (plus the config).
func (b *bench) changedSize(layers []*layer, base map[string]bool) int64 {
	var n int64
	for _, l := range layers {
		if !base[l.name] {
			n += l.desc.Size
		}
	}
	return n + 2000
}

// fileHashes is the set of sha256 of the regular files of layers.
func (b *bench) fileHashes(layers []*layer) (map[string]bool, error) {
	out := map[string]bool{}
	err := b.eachFile(layers, func(p string) error {
		h, err := hashFile(p)
		out[h] = true
		return err
	})
	return out, err
}

// perFileIdeal sums gzip -6 of each distinct file of layers whose sha256
// is not in have, each compressed alone.
func (b *bench) perFileIdeal(layers []*layer, have map[string]bool) (int64, error) {
	var total int64
	done := map[string]bool{}
	err := b.eachFile(layers, func(p string) error {
		h, err := hashFile(p)
		if err != nil || have[h] || done[h] {
			return err
		}
		done[h] = true
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		c := &counter{}
		zw, _ := gzip.NewWriterLevel(c, 6)
		if _, err := io.Copy(zw, f); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		total += c.n
		return nil
	})
	return total, err
}

func (b *bench) eachFile(layers []*layer, fn func(string) error) error {
	for _, l := range layers {
		err := filepath.WalkDir(filepath.Join(b.scen, "layers", l.name), func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			return fn(p)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

var hashCache = map[string]string{}

func hashFile(p string) (string, error) {
	if h, ok := hashCache[p]; ok {
		return h, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	s := hex.EncodeToString(h.Sum(nil))
	hashCache[p] = s
	return s, nil
}

// extractRepack times what sites do today to turn an image into another
// form: extract every layer, then tar and gzip -6 it again (GNU tar/gzip).
func (b *bench) extractRepack(layers []*layer) (time.Duration, error) {
	dir := filepath.Join(b.work, "repack")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	start := time.Now()
	for i, l := range layers {
		root := filepath.Join(dir, fmt.Sprint(i))
		if err := os.MkdirAll(root, 0o755); err != nil {
			return 0, err
		}
		blob := filepath.Join(b.layout, "blobs", "sha256", l.desc.Digest.Encoded())
		for _, args := range [][]string{
			{"tar", "-xzf", blob, "-C", root},
			{"sh", "-c", `tar -C "$1" -cf - . | gzip -6 -n > "$2"`, "sh", root, root + ".tar.gz"},
		} {
			cmd := exec.Command(args[0], args[1:]...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				return 0, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, stderr.String())
			}
		}
	}
	d := time.Since(start)
	return d, os.RemoveAll(dir)
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// standardSize is what docker save of the standard (block-framed) image of
// name in s ships: its layers and config.
func standardSize(ctx context.Context, s *store.Store, name string) (int64, error) {
	info, err := image.Inspect(ctx, s, name)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range info.Manifests {
		n += m.Config.Size
		for _, l := range m.Layers {
			n += l.Standard.Size
		}
	}
	return n, nil
}

func withImport(vs []string) []string {
	var out []string
	for _, v := range vs {
		out = append(out, imported(v))
	}
	return out
}

// importsLabel is the dev.blockfile.imports label of an image whose
// Dockerfile IMPORTs the folder /app/libs/ (a tree block) and /app/app.jar:
// path -> block digest, as the frontend records it.
func (b *bench) importsLabel(ctx context.Context, layers []*layer) (string, error) {
	m := map[string]string{}
	for _, l := range layers {
		dir := filepath.Join(b.scen, "layers", l.name)
		if libs := filepath.Join(dir, "app", "libs"); isDir(libs) {
			doc, _, err := tree.Build(ctx, libs, func(_ context.Context, p string) (blocks.Ref, error) {
				h, err := hashFile(p)
				if err != nil {
					return blocks.Ref{}, err
				}
				fi, err := os.Stat(p)
				if err != nil {
					return blocks.Ref{}, err
				}
				return blocks.Ref{Digest: digest.NewDigestFromEncoded(digest.SHA256, h), Size: fi.Size()}, nil
			})
			if err != nil {
				return "", err
			}
			m["/app/libs/"] = tree.DocRef(doc).Digest.String()
		}
		if app := filepath.Join(dir, "app", "app.jar"); !isDir(app) {
			if h, err := hashFile(app); err == nil {
				m["/app/app.jar"] = "sha256:" + h
			}
		}
	}
	data, err := json.Marshal(m)
	return string(data), err
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// imported is the name of variant v exported with the imports label (a
// valid image reference: '+' is not allowed in a tag).
func imported(v string) string { return v + "-import" }
