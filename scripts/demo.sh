#!/usr/bin/env bash
# The Blockfile demo, end to end on embedded defaults: it starts its own
# buildkitd and registry (integration/cmd/devenv, the same code as the
# integration tests), builds examples/javaapp v1 and v2, and shows what an
# upgrade from v1 to v2 costs.
#
# Each step is a function below; add new steps at the end of main.
#
# Usage: scripts/demo.sh            (or: make demo)
# Needs: Go, runc, docker-registry and busybox-static (see .ci/run).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# Re-run this script inside a dev environment that stops when it ends.
if [[ -z "${BUILDKIT_HOST:-}" || -z "${BLOCKFILE_DEVENV_DIR:-}" ]]; then
	mkdir -p .cache/bin
	echo "== building the dev environment launcher"
	go build -o .cache/bin/devenv ./integration/cmd/devenv
	exec .cache/bin/devenv -base -- bash "$0" "$@"
fi

work=$BLOCKFILE_DEVENV_DIR/demo
mkdir -p "$work"

step() { printf '\n== %s\n' "$*"; }

# size FILE...: total size in bytes.
size() { local n=0 f; for f in "$@"; do n=$((n + $(stat -c %s "$f"))); done; echo "$n"; }

human() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }

build_cli() {
	step "building bin/blockfile and bin/blockfile-frontend (make build)"
	make -s build
}

# build_app VERSION: generates the javaapp context for VERSION and builds it
# into an OCI layout ($work/VERSION.oci) and the registry.
build_app() {
	local v=$1
	step "building examples/javaapp $v (base $BLOCKFILE_BASE)"
	go run ./examples/javaapp/gen -version "$v" -out "$work/ctx-$v"
	"$BUILDCTL" build --progress=plain \
		--frontend dockerfile.v0 \
		--local context="$work/ctx-$v" \
		--local dockerfile=examples/javaapp \
		--opt build-arg:BASE="$BLOCKFILE_BASE" \
		--metadata-file "$work/$v.metadata.json" \
		--output "type=oci,dest=$work/$v.oci,tar=false,name=javaapp:$v" \
		--output "type=image,name=$BLOCKFILE_REGISTRY/examples/javaapp:$v,push=true,registry.insecure=true" \
		2>"$work/$v.build.log" || { cat "$work/$v.build.log" >&2; return 1; }
	local d
	d=$(sed -n 's/.*"containerimage.digest": *"\([^"]*\)".*/\1/p' "$work/$v.metadata.json" | head -1)
	echo "built $BLOCKFILE_REGISTRY/examples/javaapp:$v  manifest $d"
	echo "image content: $(human "$(size "$work/$v.oci"/blobs/sha256/*)") in $(ls "$work/$v.oci"/blobs/sha256 | wc -l) blobs"
}

# standard_upgrade_cost: what a normal pull of v2 downloads when v1 is
# already there: every blob of v2 that v1 does not have (whole layers).
standard_upgrade_cost() {
	step "upgrade v1 -> v2 with standard layers"
	local new=() b
	for b in $(comm -13 <(ls "$work/v1.oci/blobs/sha256") <(ls "$work/v2.oci/blobs/sha256")); do
		new+=("$work/v2.oci/blobs/sha256/$b")
	done
	# Files of v2 that v1 does not have with the same content.
	local changed=() f
	for f in $(comm -13 <(cd "$work/ctx-v1" && sha256sum app.jar libs/* | sort) \
		<(cd "$work/ctx-v2" && sha256sum app.jar libs/* | sort) | awk '{print $2}'); do
		changed+=("$work/ctx-v2/$f")
	done
	echo "files new or changed in v2:          ${changed[*]#"$work/ctx-v2/"}"
	echo "their bytes:                         $(human "$(size "${changed[@]}")")"
	echo "bytes a registry pull of v2 ships:   $(human "$(size "${new[@]}")") in ${#new[@]} blobs (whole layers)"
}

# Steps to come as the verbs land (the lead adds them here):
#   blockfile build with IMPORT, blockfile export v1 and v2, blockfile bundle
#   v1->v2, blockfile apply into an empty target store, blockfile hydrate and
#   a check that the manifest digest equals the one built above, and the bytes
#   in the bundle against standard_upgrade_cost.

main() {
	echo "dev environment: buildkitd $BUILDKIT_HOST, registry $BLOCKFILE_REGISTRY"
	build_cli
	build_app v1
	build_app v2
	standard_upgrade_cost
	step "done"
}

main "$@"
