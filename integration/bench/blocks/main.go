// Command blocks benchmarks export and hydrate on the v1 image of the
// ../shared/bench scenario and prints figures next to baselines measured in
// the same run: a plain copy of the same bytes and a `tar | gzip -6` repack.
//
//	go run ./integration/bench/blocks [-variant v1] [-compression gzip]
//
// All rates are MB/s of the image's uncompressed layer bytes (1 MB = 10^6
// bytes), so the rows compare directly: the same image each time.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
	"github.com/blockfile/blockfile/blocks/transport"
	"github.com/blockfile/blockfile/integration/benchimg"
)

var hydrateProfile string

func main() {
	variant := flag.String("variant", "v1", "scenario variant to build the image from")
	comp := flag.String("compression", "gzip", "gzip or zstd")
	minBlock := flag.Int64("min-block-size", image.DefaultMinBlockSize, "export --min-block-size")
	work := flag.String("work", "", "work directory (default $BENCH/work-blocks)")
	flag.StringVar(&hydrateProfile, "hydrate-cpuprofile", "", "write a CPU profile of the hydrate step to this file")
	flag.Parse()
	if err := run(context.Background(), *variant, blocks.Compression(*comp), *minBlock, *work); err != nil {
		fmt.Fprintln(os.Stderr, "bench-blocks:", err)
		os.Exit(1)
	}
}

type row struct {
	what string
	dur  time.Duration
}

func run(ctx context.Context, variant string, comp blocks.Compression, minBlock int64, work string) error {
	sc := benchimg.DefaultScenario()
	if !sc.Exists() {
		return fmt.Errorf("no scenario at %s: run ../shared/bench/make-scenario.sh (as root) first", sc.Root)
	}
	if work == "" {
		work = filepath.Join(filepath.Dir(sc.Root), "work-blocks")
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

	t0 := time.Now()
	b, err := benchimg.NewBuilder(filepath.Join(work, "src"))
	if err != nil {
		return err
	}
	if _, _, err := b.Image(ctx, variant, dirs); err != nil {
		return err
	}
	var tarBytes, gzBytes int64
	for _, d := range dirs {
		l, _ := b.Layer(ctx, d)
		tarBytes += l.TarLen
		gzBytes += l.Desc.Size
	}
	fmt.Printf("image %s: %d layers, %.1f MB tar, %.1f MB gzip (built in %s)\n", variant, len(dirs), mb(tarBytes), mb(gzBytes), time.Since(t0).Round(time.Millisecond))

	var rows []row
	s, err := store.Create(filepath.Join(work, "store"))
	if err != nil {
		return err
	}
	export := func(label, name string) (*image.ExportResult, error) {
		src, err := transport.ParseSource(ctx, "oci:"+b.Dir+":"+variant)
		if err != nil {
			return nil, err
		}
		defer src.Close()
		t := time.Now()
		res, err := image.Export(ctx, s, src, name, image.ExportOptions{Compression: comp, MinBlockSize: minBlock, TempDir: work})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		rows = append(rows, row{label, time.Since(t)})
		return res, nil
	}
	res, err := export("export (cold store)", variant)
	if err != nil {
		return err
	}
	again, err := export("export (warm store)", variant+"-again")
	if err != nil {
		return err
	}
	if again.Standard.Digest != res.Standard.Digest {
		return fmt.Errorf("export is not reproducible: %s then %s", res.Standard.Digest, again.Standard.Digest)
	}
	fmt.Printf("blocks: %d files, %.1f MB raw, %d members written (%.1f MB), %d reused\n",
		res.Blocks, mb(res.BlockBytes), res.NewMembers, mb(res.NewMemberBytes), res.ReusedMembers)

	// Hydrate from the blocked form only: drop the standard layers that have
	// a blocked counterpart, as on a target that received a bundle.
	img, err := image.Resolve(ctx, s, variant)
	if err != nil {
		return err
	}
	var stdBytes int64
	var stdLayers []ocispec.Descriptor
	for _, m := range img.Manifests {
		for _, l := range m.Layers {
			stdBytes += l.Standard.Size
			stdLayers = append(stdLayers, l.Standard)
			if l.HasBlocks() {
				if err := os.Remove(s.BlobPath(l.Standard.Digest)); err != nil {
					return err
				}
			}
		}
	}
	if err := s.Untag(ctx, variant+"-again"); err != nil {
		return err
	}
	out := filepath.Join(work, "hydrated")
	dst, err := transport.ParseSink(ctx, "oci:"+out+":"+variant)
	if err != nil {
		return err
	}
	if hydrateProfile != "" {
		f, err := os.Create(hydrateProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	t := time.Now()
	got, err := image.Hydrate(ctx, s, variant, dst, image.HydrateOptions{})
	if err != nil {
		return fmt.Errorf("hydrate: %w", err)
	}
	rows = append(rows, row{"hydrate (blocked form -> oci:DIR)", time.Since(t)})
	pprof.StopCPUProfile()
	if got.Digest != res.Standard.Digest {
		return fmt.Errorf("hydrate gave %s, export built %s", got.Digest, res.Standard.Digest)
	}

	// Baseline 1: a plain copy of the same bytes hydrate wrote.
	t = time.Now()
	buf := make([]byte, 1<<20)
	for _, l := range stdLayers {
		if err := copyFile(filepath.Join(out, "blobs", "sha256", l.Digest.Encoded()), filepath.Join(work, "copy.tmp"), buf, false); err != nil {
			return err
		}
	}
	rows = append(rows, row{"plain copy of the same bytes (read/write)", time.Since(t)})

	// Baseline 1b: the same copy, hashing what it copies, as every tool
	// that checks digests (skopeo, containerd, oras) must.
	t = time.Now()
	for _, l := range stdLayers {
		if err := copyFile(filepath.Join(out, "blobs", "sha256", l.Digest.Encoded()), filepath.Join(work, "copy.tmp"), buf, true); err != nil {
			return err
		}
	}
	rows = append(rows, row{"copy that verifies sha256 (as skopeo/containerd do)", time.Since(t)})

	// Baseline 2: what admins do today to repack an image: tar | gzip -6.
	t = time.Now()
	for _, d := range dirs {
		cmd := exec.CommandContext(ctx, "bash", "-c", `tar -C "$1" -cf - . | gzip -6 > "$2"`, "-", d, filepath.Join(work, "repack.tgz"))
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("tar | gzip -6 %s: %w", d, err)
		}
	}
	rows = append(rows, row{"tar | gzip -6 repack", time.Since(t)})

	fmt.Printf("\nstandard image %s, %.1f MB of layers (block-framed, %s)\n\n", res.Standard.Digest, mb(stdBytes), comp)
	fmt.Printf("| step | seconds | MB/s (uncompressed image) |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Printf("| %s | %.2f | %.0f |\n", r.what, r.dur.Seconds(), mb(tarBytes)/r.dur.Seconds())
	}
	h, cp, hcp, gz := rows[2].dur.Seconds(), rows[3].dur.Seconds(), rows[4].dur.Seconds(), rows[5].dur.Seconds()
	fmt.Printf("\nhydrate speed vs plain copy: %.2fx (goal >= 0.7x); vs verifying copy: %.2fx; vs tar|gzip -6 repack: %.1fx (goal >= 20x)\n", cp/h, hcp/h, gz/h)
	return os.RemoveAll(filepath.Join(work, "copy.tmp"))
}

// copyFile copies src to dst with a userspace read/write loop, the way any
// copying tool moves bytes between processes or devices (hiding ReadFrom
// keeps Go from using copy_file_range, which never touches the data). With
// verify it also checks the sha256 that names src, as skopeo or containerd do.
func copyFile(src, dst string, buf []byte, verify bool) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	h := sha256.New()
	w := io.Writer(out)
	if verify {
		w = io.MultiWriter(out, h)
	}
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{in}, buf); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); verify && got != filepath.Base(src) {
		return fmt.Errorf("%s: sha256 %s", src, got)
	}
	return out.Close()
}

func mb(n int64) float64 { return float64(n) / 1e6 }
