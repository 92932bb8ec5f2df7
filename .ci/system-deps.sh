#!/usr/bin/env bash
# Installs the Debian packages whose commands the tests call, when missing:
# ip (iproute2) and nsenter (util-linux).
set -euo pipefail
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
	echo "system-deps: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
