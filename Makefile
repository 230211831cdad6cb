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

.PHONY: all build setup test check vet fmt tidy race darwin fuzz test-unit test-integration demo frontend-image frontend-image-host bench-blocks bench-import bench-bundles bench-registry bench-serve clean FORCE

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

# Static checks, unit tests, then integration tests against real buildkitd,
# registry, containerd and docker buildx (started by integration/harness;
# needs root).
test: setup
	$(MAKE) check test-unit test-integration

# What every change must pass before its tests run: go vet, gofmt, the race
# detector on the format packages, go.mod/go.sum tidy, and a macOS build.
check: vet fmt tidy race darwin

vet:
	$(GO) vet ./...

# gofmt over every Go file of the module (not the .cache tool tree, not testdata).
fmt:
	@out=$$(find . -name '*.go' -not -path './.cache/*' -not -path '*/testdata/*' -not -path './tools/*' -print0 | xargs -0 gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Fails if `go mod tidy` would change go.mod or go.sum (prints the diff).
tidy:
	$(GO) mod tidy -diff

# -short keeps it to a few minutes on two idle cores (deflate is ten times
# slower under the race detector).
race:
	$(GO) test -race -short -count=1 -timeout 30m ./blocks/...

darwin:
	GOOS=darwin GOARCH=arm64 $(GO) build ./...
	GOOS=darwin GOARCH=arm64 $(GO) vet ./blocks/...

test-unit:
	$(GO) test -short ./...

# Every fuzz target of the module, FUZZTIME each (go test allows one target
# per run). Findings land in testdata/fuzz/ of the package, as go test does.
# go test minimizes every new interesting input for up to 60 s by default,
# during which it counts no executions: a short run of a target that finds
# much new coverage (FuzzDehydrate) would spend it minimizing. 1 s each.
FUZZTIME ?= 10s
FUZZMINIMIZETIME ?= 1s
fuzz:
	@set -e; for dir in $$($(GO) list -f '{{.Dir}}' ./...); do \
		for f in $$(grep -h -o '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			echo "== $$f ($$dir, $(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$dir; \
		done; \
	done

test-integration:
	$(GO) test -count=1 -timeout 60m ./integration/...

# Builds examples/javaapp v1 and v2 on its own buildkitd and registry.
demo: setup
	bash scripts/demo.sh

# The frontend image for $(PLATFORMS), cross-compiled on the build platform
# (the root Dockerfile's release stage, golang image), pushed to
# $(REGISTRY)/blockfile-frontend:$(TAG). BUILDX may name another builder,
# e.g. BUILDX="docker buildx --builder ci".
frontend-image:
	@test -n "$(REGISTRY)" || { echo "make frontend-image: set REGISTRY=host[:port]/path" >&2; exit 2; }
	$(BUILDX) build --platform $(PLATFORMS) --target release \
		--build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
		-t $(REGISTRY)/blockfile-frontend:$(TAG) --push .

# The same image without pulling a golang image: the same cross-compilation
# (CGO_ENABLED=0 GOOS/GOARCH, -trimpath, the same ldflags) on the host into
# bin/<os>_<arch>/, packaged by the frontend-host stage.
frontend-image-host:
	@test -n "$(REGISTRY)" || { echo "make frontend-image-host: set REGISTRY=host[:port]/path" >&2; exit 2; }
	set -e; for p in $(subst $(comma), ,$(PLATFORMS)); do \
		os=$${p%%/*}; arch=$${p#*/}; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '-s $(LDFLAGS)' \
			-o bin/$${os}_$${arch}/blockfile-frontend ./cmd/blockfile-frontend; \
	done
	$(BUILDX) build --platform $(PLATFORMS) --target frontend-host \
		-t $(REGISTRY)/blockfile-frontend:$(TAG) --push .

comma := ,

# Export and hydrate figures on the v1 image of ../shared/bench (run
# ../shared/bench/make-scenario.sh as root first; BENCH defaults to /tmp/bench).
bench-blocks:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./blocks/layer ./blocks/image
	$(GO) run ./integration/bench/blocks

# IMPORT against COPY for the 148 jars of the scenario: cold and warm build
# times as ratios in one run, and layer counts (real buildkitd).
bench-import:
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench BenchmarkImport -benchtime 1x -v ./integration/

# Bundle bytes for each scenario upgrade next to docker save, the 5-layer
# split, Jib and the ideal per-file bytes; apply time against extract-and-repack.
bench-bundles:
	$(GO) run ./integration/bench/bundles

# Push and pull of v1 and each upgrade of ../shared/bench through a local
# registry (docker-registry), bytes and times next to skopeo copy.
bench-registry:
	$(GO) run ./integration/bench/registry

# Pulls through blockfile serve (cold, warm) next to a plain registry, and
# the disk of each, on the v1 image of ../shared/bench (BENCH=/tmp/bench).
bench-serve:
	$(GO) run ./integration/bench/serve

clean:
	rm -rf bin

FORCE:
