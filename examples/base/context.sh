#!/usr/bin/env bash
# Usage: examples/base/context.sh DIR
# Prepares DIR as the build context of examples/base/Dockerfile: a copy of
# Debian's static busybox (apt-get install busybox-static; a dynamically
# linked busybox would fail in the Dockerfile's RUN, as there is no libc).
set -euo pipefail
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
cp "${BUSYBOX:-/bin/busybox}" "$dir/busybox"
