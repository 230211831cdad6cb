#!/usr/bin/env bash
# The Blockfile CI pipeline, one step per subcommand: what docs/CI.md
# explains and what examples/ci/github-actions.yml and gitlab-ci.yml run.
# integration/ci_pipeline_test.go runs this very script.
#
#   examples/ci/pipeline.sh blocks   # the jars into the block store
#   examples/ci/pipeline.sh build    # docker buildx build (IMPORT) -> OCI archive
#   examples/ci/pipeline.sh export   # -> standard image + blocked form in the store
#   examples/ci/pipeline.sh push     # the standard image -> $REGISTRY/$IMAGE:$TAG
#   examples/ci/pipeline.sh bundle   # offline update bundle for sites on $PREVIOUS
#   examples/ci/pipeline.sh verify   # re-hash the store
#   examples/ci/pipeline.sh all      # all of the above, in order
#
# Settings (environment):
#   IMAGE            image name in the store and the registry (required)
#   TAG              this build's tag (required)
#   PREVIOUS         tag the sites run now: the bundle carries only what it lacks
#                    (empty: a first-install bundle, --full)
#   REGISTRY         registry host[/path] to push to (push is skipped if empty)
#   CONTEXT          build context, with the Dockerfile (default .)
#   LIBS             files to add as blocks (default build/libs/*.jar)
#   FRONTEND         frontend image; set to override the Dockerfile's "# syntax=" line
#   BLOCKFILE_STORE  the block store (keep it between pipeline runs: CI cache)
#   OUT              where files are written (default out)
#   BLOCKFILE        the blockfile binary (default blockfile); DOCKER (default docker)
#   PUSH_FLAGS       extra flags for the push (e.g. --plain-http)
set -euo pipefail

: "${IMAGE:?set IMAGE}" "${TAG:?set TAG}" "${BLOCKFILE_STORE:?set BLOCKFILE_STORE}"
CONTEXT=${CONTEXT:-.}
OUT=${OUT:-out}
BLOCKFILE=${BLOCKFILE:-blockfile}
DOCKER=${DOCKER:-docker}
export BLOCKFILE_STORE

step() { printf '== %s\n' "$*" >&2; }

# blocks: every file IMPORTed must be in the store. The Dockerfile's IMPORT
# lines pin digests (developers write them with `blockfile block add
# --import-to`); a jar that does not match its line fails the build.
blocks() {
	step "blocks: ${LIBS:-build/libs/*.jar}"
	# shellcheck disable=SC2086 # LIBS is a glob
	"$BLOCKFILE" block add ${LIBS:-build/libs/*.jar}
}

# build: BuildKit builds the Dockerfile through the Blockfile frontend, with
# the store as the "blocks" build context. No attestations here: export keeps
# the image, not BuildKit's attestation manifests.
build() {
	step "build: $IMAGE:$TAG"
	mkdir -p "$OUT"
	local syntax=()
	if [[ -n ${FRONTEND:-} ]]; then
		syntax=(--build-arg "BUILDKIT_SYNTAX=$FRONTEND")
	fi
	"$DOCKER" buildx build --progress=plain --provenance=false --sbom=false \
		"${syntax[@]}" \
		--build-context "blocks=$BLOCKFILE_STORE" \
		--output "type=oci,dest=$OUT/$IMAGE-$TAG.oci.tar" \
		"$CONTEXT"
}

# export: the standard image (what runs; its digest is the one to sign and
# deploy) and its blocked form, into the store.
export_() {
	step "export: $IMAGE:$TAG"
	"$BLOCKFILE" export --json "oci-archive:$OUT/$IMAGE-$TAG.oci.tar" "$IMAGE:$TAG" >"$OUT/$IMAGE-$TAG.export.json"
	"$BLOCKFILE" inspect "$IMAGE:$TAG" >&2
}

# push: the standard image, byte for byte, to the registry.
push() {
	if [[ -z ${REGISTRY:-} ]]; then
		step "push: skipped (no REGISTRY)"
		return
	fi
	step "push: $REGISTRY/$IMAGE:$TAG"
	# shellcheck disable=SC2086 # PUSH_FLAGS are words
	"$BLOCKFILE" hydrate ${PUSH_FLAGS:-} "$IMAGE:$TAG" -o "docker://$REGISTRY/$IMAGE:$TAG"
}

# bundle: what a site on $PREVIOUS needs to run $TAG, in one file.
bundle() {
	local base=(--full) name="$IMAGE-$TAG-full.bundle"
	if [[ -n ${PREVIOUS:-} ]]; then
		base=(--from "$IMAGE:$PREVIOUS")
		name="$IMAGE-$PREVIOUS-to-$TAG.bundle"
	fi
	step "bundle: $name"
	"$BLOCKFILE" bundle create "${base[@]}" "$IMAGE:$TAG" -o "$OUT/$name"
}

verify() {
	step "verify: $BLOCKFILE_STORE"
	"$BLOCKFILE" verify
}

main() {
	local s
	for s in "$@"; do
		case $s in
		blocks | build | push | bundle | verify) "$s" ;;
		export) export_ ;;
		all) blocks && build && export_ && push && bundle && verify ;;
		*)
			echo "pipeline.sh: unknown step $s (want blocks, build, export, push, bundle, verify or all)" >&2
			exit 2
			;;
		esac
	done
}

if (($# == 0)); then
	set -- all
fi
main "$@"
