#!/usr/bin/env bash
# Installs the Debian packages Blockfile's demo and tests need, if any is
# missing: the one list, used by `make demo`, `make test` and .ci/run.
#
# Usage: scripts/setup.sh [PACKAGE...]   (no arguments: the list below)
#
# Exit status: 0 when everything is installed (or was just installed);
# 2 when something is missing and this is not root: it then prints the exact
# command to run as root and installs nothing; 1 when apt-get fails.
set -euo pipefail

# runc, containerd: buildkitd's worker and `ctr` in the tests; docker-registry:
# the distribution registry the tests push to; busybox-static: the example
# base image is built from it (nothing is pulled); skopeo, umoci: interop
# tests; zstd, pigz, xdelta3, jq, openssl, apache2-utils (htpasswd): tools
# tests compare against or use; debootstrap: the benchmark scenario; git,
# make, ca-certificates: the build itself; openssh-client: ssh-keygen for
# the build --ssh test.
packages=(runc containerd skopeo umoci docker-registry busybox-static zstd pigz debootstrap git make ca-certificates jq xdelta3 apache2-utils openssl openssh-client)
if (($#)); then
	packages=("$@")
fi

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
((${#missing[@]})) || exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
	echo "setup: missing Debian packages: ${missing[*]}" >&2
	echo "setup: run as root:" >&2
	echo "  $cmd" >&2
	exit 2
fi
echo "setup: installing ${missing[*]}" >&2
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
