package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/blockfile/blockfile/blocks/serve"
)

func init() {
	var addr, tlsCert, tlsKey string
	var upstreams []string
	var keep bool
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "serve [--store DIR] [--addr HOST:PORT] [--upstream REGISTRY]... [--tls-cert F --tls-key F]",
		Short: "Serve the store's standard images to unchanged clients (a read-only registry mirror)",
		Long: `Serve the store as a read-only registry: the pull side of the OCI
distribution API (/v2/, manifests by tag and digest, blobs with HEAD and
Range, tag lists), so containerd (a hosts.toml mirror entry), Docker
(registry-mirrors), BuildKit FROM and skopeo pull the store's images
unchanged. Store name team/app:v2 is repository team/app, tag v2; a tag
serves the image index the store holds (standard manifests with their
platforms, and the blocked form as unknown/unknown entries that clients
skip), so digests match the registry the image was pushed to. A request
with containerd's ?ns=HOST also finds an image stored as HOST/team/app:v2.

A standard layer the store holds only in blocked form (a bundle applied with
--materialize=false) is hydrated on demand and streamed while it is
produced; requests for one layer share one hydration, and every byte sent is
checked against the layer digest (the last byte goes out only once it
matched; on a mismatch the connection is cut and the digest logged).
--keep-hydrated keeps what is hydrated in the store; by default it is
dropped a minute after its last reader, and the store stays at the blocked
form's size.

Images added to the store while serve runs (bundle apply, export) are served
at once. Writes (push, delete) are refused with UNSUPPORTED.

--upstream REGISTRY (repeatable) fills the store with what clients ask for
and it lacks: a tag or digest missing from the store is read from the
registry (each --upstream in order; or only the one containerd names in
?ns=, when it is one of them). If the registry's index has a blocked form
(pushed by 'blockfile push'), serve fetches the manifests and only the
blocks the store lacks, as 'blockfile pull --materialize=false' does, and
hydrates the standard layers for the client; otherwise it copies the image
as it is. The request waits for the fill; concurrent requests for one
reference share it. The image is stored as REGISTRY/REPOSITORY:TAG. A tag
filled this way is resolved upstream again (a HEAD) when it was last
checked more than --upstream-ttl ago, and filled again if it moved; when
the registry cannot be reached, the stored image is served.
--upstream '*' fills from whatever registry ?ns= names: any client that
reaches serve can then make it connect to any host, so use it only for
trusted clients. The connection flags (--authfile, --plain-http,
--tls-verify, --hosts-dir) are those of blockfile pull.

The listening address is printed on stderr ("listening on ..."); --addr
with port 0 picks a free port. Logs go to stderr.`,
		Example: `  blockfile serve --store /var/lib/blockfile --addr :5000
  blockfile serve --addr 0.0.0.0:443 --tls-cert site.crt --tls-key site.key
  blockfile serve --store /var/lib/blockfile --upstream registry.example --upstream-ttl 5m`,
		Args: exactArgs(0),
	}
	// Created if missing: a site starts serve on an empty volume and applies
	// bundles into it while it runs.
	open := createStoreFlag(cmd)
	reg := registryFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&addr, "addr", ":5000", "address to listen on (HOST:PORT)")
	f.StringArrayVar(&upstreams, "upstream", nil, "registry (HOST[:PORT]) to fill missing images from (repeatable, tried in order; '*': the registry ?ns= names)")
	f.DurationVar(&ttl, "upstream-ttl", time.Minute, "how long a tag filled from upstream is served before it is resolved upstream again (0: on every request)")
	f.StringVar(&tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM; with --tls-key)")
	f.StringVar(&tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	f.BoolVar(&keep, "keep-hydrated", false, "keep layers hydrated on demand in the store (faster later pulls; the store grows by the standard layers)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if (tlsCert == "") != (tlsKey == "") {
			return usageError{errors.New("serve: --tls-cert and --tls-key go together")}
		}
		if ttl < 0 {
			return usageError{fmt.Errorf("serve: --upstream-ttl %s: want 0 or more", ttl)}
		}
		uo := serve.UpstreamOptions{TagTTL: ttl}
		for _, u := range upstreams {
			if u == "*" {
				uo.AnyNamespace = true
				continue
			}
			if err := serve.CheckRegistry(u); err != nil {
				return usageError{fmt.Errorf("serve --upstream: %w", err)}
			}
			uo.Registries = append(uo.Registries, u)
		}
		s, err := open()
		if err != nil {
			return err
		}
		if len(upstreams) > 0 {
			uo.Upstream = serve.NewRegistryUpstream(s, *reg, 0)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return usageError{fmt.Errorf("serve: listen on %s: %w", addr, err)}
		}
		scheme := "http"
		if tlsCert != "" {
			scheme = "https"
		}
		hctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sv := serve.New(hctx, s, serve.Options{KeepHydrated: keep, Upstream: uo, Log: log})
		srv := &http.Server{
			Handler:           sv,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "listening on %s://%s (store %s)\n", scheme, ln.Addr(), s.Root())
		if uo.Upstream != nil {
			log.Info("upstream", "registries", uo.String())
		}
		errc := make(chan error, 1)
		go func() {
			if tlsCert != "" {
				errc <- srv.ServeTLS(ln, tlsCert, tlsKey)
			} else {
				errc <- srv.Serve(ln)
			}
		}()
		select {
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		case <-ctx.Done():
		}
		log.Info("shutting down")
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		err = srv.Shutdown(sctx)
		// Let hydrations finish (and kept layers reach the store) for a
		// while, then cancel what is left.
		waited := make(chan struct{})
		go func() { sv.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			cancel()
			<-waited
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("serve: shutdown: %w", err)
		}
		return nil
	}
	register(cmd)
}
