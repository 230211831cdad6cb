#!/usr/bin/env bash
# The Blockfile demo, end to end on embedded defaults: it starts its own
# buildkitd and registry (integration/cmd/devenv, the same code as the
# integration tests), builds examples/javaapp v1 and v2, and shows what an
# upgrade from v1 to v2 costs.
#
# Each step is a function below; add new steps at the end of main.
#
# Usage: scripts/demo.sh            (or: make demo)
# Needs: Go, runc, docker-registry and busybox-static (scripts/setup.sh
# installs them; make demo runs it first).
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
	split_cost=$(size "${new[@]}")
	echo "bytes a registry pull of v2 ships:   $(human "$split_cost") in ${#new[@]} blobs (whole layers)"
}

# import_build VERSION: the same service built with IMPORT through the
# Blockfile frontend: the jars are added to the source store as blocks, the
# Dockerfile places each one by digest (generated with `block add
# --import-to`, the way a build script would), and `blockfile build` runs the
# frontend, then stores the standard image and its blocked form.
import_build() {
	local v=$1
	local ctx=$work/ctx-$v
	step "building javaapp $v with IMPORT (blockfile build)"
	{
		echo "# syntax=blockfile-frontend (ignored by blockfile build, which runs the frontend in-process)"
		echo "ARG BASE"
		echo 'FROM ${BASE}'
		echo "WORKDIR /app"
		"$bf" block add --store "$src" --import-to /app/libs/ "$ctx"/libs/*.jar | grep '^IMPORT'
		"$bf" block add --store "$src" --import-to /app/app.jar "$ctx/app.jar" | grep '^IMPORT'
		echo 'CMD ["/bin/sh", "-c", "echo java -jar /app/app.jar; unzip -p /app/app.jar META-INF/MANIFEST.MF"]'
	} >"$work/$v.Dockerfile"
	echo "$(grep -c '^IMPORT' "$work/$v.Dockerfile") IMPORT lines, e.g.:"
	grep -m2 '^IMPORT' "$work/$v.Dockerfile" | sed 's/^/    /'
	"$bf" build --store "$src" --progress plain --json -f "$work/$v.Dockerfile" \
		--build-arg BASE="$BLOCKFILE_BASE" -t "javaapp:$v" "$ctx" \
		>"$work/$v.build.json" 2>"$work/$v.import-build.log" || { cat "$work/$v.import-build.log" >&2; return 1; }
	built[$v]=$(jq -r .standard.digest "$work/$v.build.json")
	echo "built javaapp:$v  standard manifest ${built[$v]}"
}

# ship: a first-install bundle of v1 and a v1 -> v2 update bundle, both
# applied into an empty target store (the customer site), which writes v2 as
# an oci-archive for docker load / ctr images import.
ship() {
	step "bundles: v1 first install, then the v1 -> v2 update"
	"$bf" bundle create --store "$src" --progress none --full javaapp:v1 -o "$work/v1.bundle" >/dev/null
	"$bf" bundle create --store "$src" --progress none --from javaapp:v1 javaapp:v2 -o "$work/v1-v2.bundle" >/dev/null
	"$bf" bundle inspect "$work/v1-v2.bundle"
	step "applying both at the site (an empty store)"
	"$bf" bundle apply --store "$dst" --progress none "$work/v1.bundle" >/dev/null
	"$bf" bundle apply --store "$dst" --progress none --json "$work/v1-v2.bundle" \
		--output "oci-archive:$work/javaapp-v2.tar" >"$work/apply.json"
	local got
	got=$(jq -r '.images[0].standard.digest' "$work/apply.json")
	echo "site has javaapp:v2  standard manifest $got"
	if [[ $got != "${built[v2]}" ]]; then
		echo "MISMATCH: built ${built[v2]}, site got $got" >&2
		return 1
	fi
	echo "identical to the manifest built at the source: yes"
	"$bf" verify --store "$dst" >/dev/null && echo "blockfile verify of the site store: ok"
}

# compare: bytes shipped for the upgrade against the full image and the
# usual layer split (the COPY build above).
compare() {
	step "what the v1 -> v2 upgrade costs"
	local full
	full=$(jq '([.layers[].size] | add) + .config.size' "$dst/blobs/sha256/$(echo "${built[v2]}" | cut -d: -f2)")
	printf '%-46s %10s\n' "Blockfile update bundle (v1 -> v2):" "$(human "$(size "$work/v1-v2.bundle")")"
	printf '%-46s %10s\n' "usual layer split (COPY libs/, COPY app.jar):" "$(human "$split_cost")"
	printf '%-46s %10s\n' "whole image (docker save / first pull):" "$(human "$full")"
	printf '%-46s %10s\n' "first-install bundle (v1, everything):" "$(human "$(size "$work/v1.bundle")")"
}

main() {
	echo "dev environment: buildkitd $BUILDKIT_HOST, registry $BLOCKFILE_REGISTRY"
	build_cli
	bf=$repo/bin/blockfile
	src=$work/source-store dst=$work/site-store
	rm -rf "$src" "$dst"
	declare -gA built
	build_app v1
	build_app v2
	standard_upgrade_cost
	import_build v1
	import_build v2
	ship
	compare
	step "done (work files in $work)"
}

main "$@"
