# The Blockfile frontend image.
#
#   release (default): builds the frontend from source in a golang image and
#     ships the static binary in an otherwise empty image.
#     docker buildx build -t REGISTRY/blockfile-frontend:TAG --push .
#   frontend-host: packages a binary already built on the host as
#     bin/blockfile-frontend (`make build`), so nothing needs to be pulled;
#     integration/harness builds the frontend image this way.
#     docker buildx build --target frontend-host -t ... .
#   serve: the blockfile CLI running `blockfile serve` (the site mirror,
#     docs/SERVE.md) on port 5000 with the store on the /store volume.
#     docker buildx build --target serve -t REGISTRY/blockfile-serve:TAG .
#     docker run -p 5000:5000 -v /var/lib/blockfile:/store REGISTRY/blockfile-serve:TAG
#   serve-host: the same from a binary built on the host as bin/blockfile.
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
COPY bin/blockfile-frontend /bin/blockfile-frontend

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/blockfile-frontend ./cmd/blockfile-frontend

# The site mirror. The entrypoint is the CLI, so the same image also runs
# `bundle apply`, `verify` and `gc` on the store (args replace the default).
FROM scratch AS serve-base
VOLUME /store
EXPOSE 5000
ENTRYPOINT ["/bin/blockfile"]
CMD ["serve", "--store", "/store", "--addr", ":5000"]

FROM serve-base AS serve-host
COPY bin/blockfile /bin/blockfile

FROM build AS build-cli
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/blockfile ./cmd/blockfile

FROM serve-base AS serve
COPY --from=build-cli /out/blockfile /bin/blockfile

FROM frontend-base AS release
COPY --from=build /out/blockfile-frontend /bin/blockfile-frontend
