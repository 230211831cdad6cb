package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	gname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
	"github.com/blockfile/blockfile/blocks/registry"
	"github.com/blockfile/blockfile/blocks/transport"
)

func init() {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Make, inspect and apply offline update bundles",
		Long: `A bundle is one file (a tar holding an OCI image layout) that carries one or
more images to a site that cannot pull: only the blobs the site lacks, and the
list of blobs it must already hold. See docs/BUNDLES.md.`,
	}
	cmd.AddCommand(newBundleCreateCmd(), newBundleInspectCmd(), newBundleApplyCmd())
	register(cmd)
}

func newBundleCreateCmd() *cobra.Command {
	var (
		from      []string
		have      string
		full      bool
		out       string
		asJSON    bool
		progress  string
		noPatches bool
		noDeltas  bool
	)
	cmd := &cobra.Command{
		Use:   "create [flags] (--from NAME... | --have FILE | --full) NAME... -o FILE",
		Short: "Write a bundle of images holding only what the site lacks",
		Long: `Create writes to FILE the images NAME... (tags in the store) minus what the
site already has: the images it was given before (--from, repeatable or
comma-separated), or an inventory brought back from it (--have, made there by
'blockfile inventory'). --full makes a bundle for a first install, carrying
everything. Blobs shared by several images travel once. A changed blocked
layer, block set or config travels as a patch against the blob the site holds
where that is smaller (--no-patches: always whole). A changed block (a rebuilt
binary, a JDK's lib/modules, a jar) travels as a binary delta against the
block the site holds at the same path, at the same path without version, or
with similar content, where that saves at least an eighth (--no-deltas: never;
--no-patches turns deltas off too). A changed layer whose blocked form would
still cost more than the layer itself travels as its standard layer, and
apply derives the blocked form from it: an upgrade never carries more than the
changed layers whole.

A --from docker://REF names a base in a registry: its blocked form is pulled
into the store first (as 'blockfile pull --materialize=false': no standard
layer), so CI with an empty store can make an update bundle.`,
		Args: minArgs(1),
	}
	openStore := storeFlag(cmd)
	reg := registryFlags(cmd)
	cmd.Flags().StringSliceVar(&from, "from", nil, "images the site already has (its base)")
	cmd.Flags().StringVar(&have, "have", "", "inventory file of the site's store (its base)")
	cmd.Flags().BoolVar(&full, "full", false, "no base: carry everything (first install)")
	addOutputFlag(cmd, &out, "bundle file to write (required)")
	addJSONFlag(cmd, &asJSON, "print the bundle header as JSON")
	addProgressFlag(cmd, &progress)
	cmd.Flags().BoolVar(&noPatches, "no-patches", false, "ship changed blobs whole, never as patches against what the site holds")
	cmd.Flags().BoolVar(&noDeltas, "no-deltas", false, "ship changed blocks whole, never as deltas against blocks the site holds")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		n := 0
		for _, set := range []bool{len(from) > 0, have != "", full} {
			if set {
				n++
			}
		}
		if n != 1 {
			return usageError{errors.New("bundle create: give exactly one of --from NAME, --have FILE or --full")}
		}
		if out == "" {
			return usageError{errors.New("bundle create: -o FILE is required")}
		}
		pw, plain, err := progressOutput(progress, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		opts := bundle.CreateOptions{From: from, Full: full, NoPatches: noPatches, NoDeltas: noDeltas}
		if have != "" {
			f, err := os.Open(have)
			if err != nil {
				return err
			}
			opts.Have, err = bundle.ReadInventory(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", have, err)
			}
		}
		s, err := openStore()
		if err != nil {
			return err
		}
		for i, f := range opts.From {
			if !strings.HasPrefix(f, "docker://") {
				continue
			}
			var res *registry.PullResult
			err := readFrom(cmd.Context(), reg, f, func(ref gname.Reference, ropts []remote.Option, conn *transport.HTTP) error {
				var err error
				res, err = registry.Pull(cmd.Context(), s, ref, "", registry.PullOptions{Remote: ropts, HTTP: conn, Registry: *reg, NoMaterialize: true, Progress: pw, PlainProgress: plain})
				return err
			})
			if err != nil {
				return fmt.Errorf("--from %s: %w", f, err)
			}
			opts.From[i] = res.Name
		}
		prog, done := progressFunc(pw, plain)
		opts.Progress = prog
		h, err := bundle.Create(cmd.Context(), s, args, out, opts)
		done()
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), h)
		}
		fi, err := os.Stat(out)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "wrote %s (%s)\n", blocks.Quote(out), sizeString(fi.Size()))
		printHeader(w, h)
		return nil
	}
	return cmd
}

func newBundleInspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect [flags] FILE",
		Short: "Show the images in a bundle, what it adds and what it requires",
		Long: `Inspect reads the header of a bundle (the first entry of the file, so this is
quick whatever the bundle's size) and shows its images, what it adds by kind
and what the target store must already hold. --json prints the whole header,
with every blob added and required.`,
		Args: exactArgs(1),
	}
	addJSONFlag(cmd, &asJSON, "print the bundle header as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		h, err := bundle.ReadHeader(args[0])
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), h)
		}
		w := cmd.OutOrStdout()
		if fi, err := os.Stat(args[0]); err == nil {
			fmt.Fprintf(w, "bundle %s (%s), format version %d\n", blocks.Quote(args[0]), sizeString(fi.Size()), h.Version)
		}
		printHeader(w, h)
		return nil
	}
	return cmd
}

func newBundleApplyCmd() *cobra.Command {
	var (
		outputs     []string
		asJSON      bool
		progress    string
		materialize bool
	)
	cmd := &cobra.Command{
		Use:   "apply [flags] FILE [-o DEST]...",
		Short: "Check a bundle, add it to the store and write its images",
		Long: `Apply first checks, without writing anything, that the store holds every blob
the bundle requires and that every blob in the bundle is intact and belongs to
its images; if not, it lists what is wrong and exits 1 with the store
unchanged. Then it ingests the blobs (each verified, written to a temp file and
renamed), tags each image, rebuilds its standard image in the store and
writes it to each -o/--output: oci-archive:FILE[:REF] (for docker load and ctr
images import), oci:DIR[:REF] or docker://REF. In an output, {name} is
replaced by the image name; with several images in the bundle every output
must contain {name}. Apply can be re-run at any time, also after being killed.`,
		Args: exactArgs(1),
	}
	openStore := createStoreFlag(cmd)
	reg := registryFlags(cmd)
	addOutputsFlag(cmd, &outputs, "where to write each image: oci-archive:FILE[:REF], oci:DIR[:REF] or docker://REF (repeatable)")
	cmd.Flags().BoolVar(&materialize, "materialize", true, "also rebuild the standard layers inside the store (false: keep only the blocked form; hydrate on demand)")
	addJSONFlag(cmd, &asJSON, "print what was done as JSON")
	addProgressFlag(cmd, &progress)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		pw, plain, err := progressOutput(progress, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		s, err := openStore()
		if err != nil {
			return err
		}
		prog, done := progressFunc(pw, plain)
		res, err := bundle.Apply(cmd.Context(), s, args[0], bundle.ApplyOptions{
			Outputs: outputs, Progress: prog, HydrateProgress: pw, PlainProgress: plain, NoMaterialize: !materialize,
			Registry: *reg,
		})
		done()
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "applied %s in %s: %d blobs ingested (%s), %d already present, %d prerequisites found\n",
			blocks.Quote(args[0]), res.Duration.Round(time.Millisecond), res.Ingested.Blobs, sizeString(res.Ingested.Bytes), res.Present.Blobs, res.Required.Blobs)
		for _, im := range res.Images {
			fmt.Fprintf(w, "  %s  %s\n", im.Name, im.Standard.Digest)
			for _, o := range im.Outputs {
				fmt.Fprintf(w, "    -> %s\n", blocks.Quote(o))
			}
		}
		return nil
	}
	return cmd
}

// printHeader prints the images of a bundle, what it adds and requires.
func printHeader(w io.Writer, h *bundle.Header) {
	fmt.Fprintf(w, "images (%d):\n", len(h.Images))
	for _, im := range h.Images {
		fmt.Fprintf(w, "  %s  %s  %s\n", blocks.Quote(im.Name), im.Standard.Digest, blocks.Sanitize(strings.Join(im.Platforms, ",")))
	}
	fmt.Fprintf(w, "adds %d blobs, %s:\n", h.Adds.Blobs, sizeString(h.Adds.Bytes))
	for _, k := range []struct {
		label string
		kinds []bundle.Kind
	}{
		{"blocks", []bundle.Kind{bundle.KindBlock}},
		{"blocked layers", []bundle.Kind{bundle.KindBlockedLayer}},
		{"layers", []bundle.Kind{bundle.KindLayer}},
		{"metadata", []bundle.Kind{bundle.KindIndex, bundle.KindManifest, bundle.KindBlockedManifest, bundle.KindBlockSet, bundle.KindConfig}},
	} {
		var c bundle.Count
		for _, kind := range k.kinds {
			c.Blobs += h.Adds.Kinds[kind].Blobs
			c.Bytes += h.Adds.Kinds[kind].Bytes
		}
		fmt.Fprintf(w, "  %-15s %6d  %s\n", k.label, c.Blobs, sizeString(c.Bytes))
	}
	if p := h.Patched; p != nil {
		var whole int64
		for _, b := range h.Blobs {
			if b.Patch != nil {
				whole += b.Size
			}
		}
		fmt.Fprintf(w, "  %d of them travel as patches: %s for %s\n", p.Blobs, sizeString(p.Bytes), sizeString(whole))
		printDeltas(w, h)
	}
	for _, b := range h.Blobs {
		if d := b.Derive; d != nil {
			fmt.Fprintf(w, "  standard layer %s (%s) travels in place of its blocked form (smaller): apply derives blocked layer %s and block set %s from it\n",
				b.Digest, sizeString(b.Size), d.Blocked.Digest, d.BlockSet.Digest)
		}
	}
	r := h.Requires
	fmt.Fprintf(w, "requires %d blobs (%s) in the target store\n", r.Blobs, sizeString(r.Bytes))
}

// progressFunc turns a progress writer into a bundle.ProgressFunc: a bar per
// stage on a terminal, or with plain a line per stage and every 10%.
func progressFunc(w io.Writer, plain bool) (bundle.ProgressFunc, func()) {
	if w == nil {
		return nil, func() {}
	}
	var (
		stage string
		bar   *progressbar.ProgressBar
		tenth int64
	)
	finish := func() {
		if bar != nil {
			bar.Finish()
			bar = nil
		}
	}
	return func(st string, done, total int64) {
		if st != stage {
			finish()
			stage, tenth = st, -1
			if !plain {
				bar = progressbar.NewOptions64(total,
					progressbar.OptionSetWriter(w),
					progressbar.OptionSetDescription(st),
					progressbar.OptionShowBytes(true),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionSetWidth(30),
					progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
				)
			}
		}
		if bar != nil {
			bar.Set64(done)
			return
		}
		if t := done * 10 / max(total, 1); t != tenth {
			tenth = t
			fmt.Fprintf(w, "%s: %s of %s\n", st, sizeString(done), sizeString(total))
		}
	}, finish
}

// printDeltas lists the blocks that travel as deltas: which base each
// uses and what it saved.
func printDeltas(w io.Writer, h *bundle.Header) {
	for _, b := range h.Blobs {
		p := b.Patch
		if p == nil || p.Encoding != bundle.PatchDeltaMember {
			continue
		}
		fmt.Fprintf(w, "    delta %s: %s for %s (saves %s) against %s (%s)\n",
			p.Path, sizeString(p.Size), sizeString(b.Size), sizeString(b.Size-p.Size), p.BasePath, p.BaseChoice)
	}
}
