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
#   serve: the blockfile CLI running `blockfile serve` (the site mirror,
#     docs/SERVE.md) on port 5000 with the store on the /store volume:
#       docker buildx build --platform linux/amd64,linux/arm64 --target serve -t REGISTRY/blockfile-serve:TAG --push .
#       docker run -p 5000:5000 -v /var/lib/blockfile:/store REGISTRY/blockfile-serve:TAG
#   serve-host: the same from binaries built on the host as
#     bin/<os>_<arch>/blockfile (static, CGO_ENABLED=0).
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

# The site mirror. The entrypoint is the CLI, so the same image also runs
# `bundle apply`, `verify` and `gc` on the store (arguments replace CMD).
FROM scratch AS serve-base
VOLUME /store
EXPOSE 5000
ENTRYPOINT ["/bin/blockfile"]
CMD ["serve", "--store", "/store", "--addr", ":5000"]

FROM serve-base AS serve-host
ARG TARGETOS
ARG TARGETARCH
COPY bin/${TARGETOS}_${TARGETARCH}/blockfile /bin/blockfile

FROM build AS build-cli
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags="-s -X github.com/blockfile/blockfile/internal/version.Version=${VERSION} -X github.com/blockfile/blockfile/internal/version.Commit=${COMMIT}" \
      -o /out/blockfile ./cmd/blockfile

FROM serve-base AS serve
COPY --from=build-cli /out/blockfile /bin/blockfile

FROM frontend-base AS release
COPY --from=build /out/blockfile-frontend /bin/blockfile-frontend
