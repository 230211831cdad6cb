# The Blockfile frontend image.
#
#   release (default): cross-compiles the frontend on the build platform (no
#     emulation: FROM --platform=$BUILDPLATFORM, GOOS/GOARCH from the target
#     platform) and ships the static binary in an otherwise empty image.
#       make frontend-image REGISTRY=registry.example/team
#     is
#       docker buildx build --platform linux/amd64,linux/arm64 --target release \
#         --build-arg VERSION=... --build-arg COMMIT=... \
#         -t REGISTRY/blockfile-frontend:TAG --push .
#   frontend-host: packages binaries already cross-compiled on the host as
#     bin/<os>_<arch>/blockfile-frontend, so nothing needs to be pulled
#     (make frontend-image-host; integration/harness builds the frontend
#     image this way):
#       docker buildx build --platform linux/amd64,linux/arm64 --target frontend-host -t ... .
#
# The labels tell BuildKit the frontend needs no network and supports inputs,
# subrequests and named contexts (buildx refuses --build-context without the
# contexts capability).
#
# No "# syntax=" line: BuildKit's built-in Dockerfile frontend builds this file
# without pulling anything.

ARG GO_VERSION=1.26.8

FROM scratch AS frontend-base
LABEL moby.buildkit.frontend.network.none="true" \
      moby.buildkit.frontend.caps="moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts"
ENTRYPOINT ["/bin/blockfile-frontend"]

FROM frontend-base AS frontend-host
ARG TARGETOS
ARG TARGETARCH
COPY bin/${TARGETOS}_${TARGETARCH}/blockfile-frontend /bin/blockfile-frontend

# The Go toolchain runs on the build platform and cross-compiles: no QEMU.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=
ARG COMMIT=
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags="-s -X github.com/blockfile/blockfile/internal/version.Version=${VERSION} -X github.com/blockfile/blockfile/internal/version.Commit=${COMMIT}" \
      -o /out/blockfile-frontend ./cmd/blockfile-frontend

FROM frontend-base AS release
COPY --from=build /out/blockfile-frontend /bin/blockfile-frontend
