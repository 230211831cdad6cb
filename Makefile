# Blockfile. See README.md.
GO ?= go

.PHONY: all build test test-unit test-integration demo bench-blocks bench-import bench-bundles bench-serve clean FORCE

all: build

# The CLI and the frontend (static: it runs in a FROM scratch image).
build: bin/blockfile bin/blockfile-frontend

bin/blockfile: FORCE
	$(GO) build -o $@ ./cmd/blockfile

bin/blockfile-frontend: FORCE
	CGO_ENABLED=0 $(GO) build -o $@ ./cmd/blockfile-frontend

# Unit tests, then integration tests against real buildkitd, registry,
# containerd and docker buildx (started by integration/harness; needs root).
test: test-unit test-integration

test-unit:
	$(GO) test -short ./...

test-integration:
	$(GO) test -count=1 -timeout 60m ./integration/...

# Builds examples/javaapp v1 and v2 on its own buildkitd and registry.
demo:
	bash scripts/demo.sh

# Export and hydrate figures on the v1 image of ../shared/bench (run
# ../shared/bench/make-scenario.sh as root first; BENCH defaults to /tmp/bench).
bench-blocks:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./blocks/layer ./blocks/image
	$(GO) run ./integration/bench/blocks

# IMPORT against COPY for the 148 jars of the scenario: cold and warm build
# times as ratios in one run, and layer counts (real buildkitd).
bench-import:
	BLOCKFILE_BENCH=1 $(GO) test -count=1 -run TestBenchImport -v ./integration/

# Bundle bytes for each scenario upgrade next to docker save, the 5-layer
# split, Jib and the ideal per-file bytes; apply time against extract-and-repack.
bench-bundles:
	$(GO) run ./integration/bench/bundles

# Pulls through blockfile serve (cold, warm) next to a plain registry, and
# the disk of each, on the v1 image of ../shared/bench (BENCH=/tmp/bench).
bench-serve:
	$(GO) run ./integration/bench/serve

clean:
	rm -rf bin

FORCE:
