# Blockfile. See README.md.
GO ?= go

# Version stamped into both binaries (blockfile version): the tag, else the
# commit; COMMIT is the full commit hash. A release sets VERSION=v1.2.3.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/blockfile/blockfile/internal/version.Version=$(VERSION) -X github.com/blockfile/blockfile/internal/version.Commit=$(COMMIT)

# make frontend-image REGISTRY=registry.example/team [TAG=v1.2.3]
REGISTRY ?=
TAG ?= $(VERSION)
PLATFORMS ?= linux/amd64,linux/arm64
BUILDX ?= docker buildx

.PHONY: all build setup test test-unit test-integration demo frontend-image bench-blocks bench-import bench-bundles clean FORCE

all: build

# The CLI and the frontend (static: it runs in a FROM scratch image).
build: bin/blockfile bin/blockfile-frontend

bin/blockfile: FORCE
	$(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/blockfile

bin/blockfile-frontend: FORCE
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $@ ./cmd/blockfile-frontend

# Installs the missing Debian packages (as root; otherwise prints the
# apt-get command and fails with status 2). demo and test run it first.
setup:
	bash scripts/setup.sh

# Unit tests, then integration tests against real buildkitd, registry,
# containerd and docker buildx (started by integration/harness; needs root).
test: setup
	$(MAKE) test-unit test-integration

test-unit:
	$(GO) test -short ./...

test-integration:
	$(GO) test -count=1 -timeout 60m ./integration/...

# Builds examples/javaapp v1 and v2 on its own buildkitd and registry.
demo: setup
	bash scripts/demo.sh

# The frontend image for $(PLATFORMS), cross-compiled on the build platform
# (the root Dockerfile's release stage), pushed to $(REGISTRY)/blockfile-frontend:$(TAG).
frontend-image:
	@test -n "$(REGISTRY)" || { echo "make frontend-image: set REGISTRY=host[:port]/path" >&2; exit 2; }
	$(BUILDX) build --platform $(PLATFORMS) --target release \
		--build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
		-t $(REGISTRY)/blockfile-frontend:$(TAG) --push .

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

clean:
	rm -rf bin

FORCE:
