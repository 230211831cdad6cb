# Blockfile. See README.md.
GO ?= go

.PHONY: all build test check vet fmt tidy race darwin fuzz test-unit test-integration demo bench-blocks bench-import bench-bundles clean FORCE

all: build

# The CLI and the frontend (static: it runs in a FROM scratch image).
build: bin/blockfile bin/blockfile-frontend

bin/blockfile: FORCE
	$(GO) build -o $@ ./cmd/blockfile

bin/blockfile-frontend: FORCE
	CGO_ENABLED=0 $(GO) build -o $@ ./cmd/blockfile-frontend

# Static checks, unit tests, then integration tests against real buildkitd,
# registry, containerd and docker buildx (started by integration/harness;
# needs root).
test: check test-unit test-integration

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

test-unit:
	$(GO) test -short ./...

# Every fuzz target of the module, FUZZTIME each (go test allows one target
# per run). Findings land in testdata/fuzz/ of the package, as go test does.
FUZZTIME ?= 10s
fuzz:
	@set -e; for dir in $$($(GO) list -f '{{.Dir}}' ./...); do \
		for f in $$(grep -h -o '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			echo "== $$f ($$dir, $(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$dir; \
		done; \
	done

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
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench BenchmarkImport -benchtime 1x -v ./integration/

# Bundle bytes for each scenario upgrade next to docker save, the 5-layer
# split, Jib and the ideal per-file bytes; apply time against extract-and-repack.
bench-bundles:
	$(GO) run ./integration/bench/bundles

clean:
	rm -rf bin

FORCE:
