#!/usr/bin/env bash
# Installs the Debian packages whose commands the tests call, when missing:
# ip (iproute2), nsenter (util-linux), and the toolchain that
# TestGeneratedObjectsUpToDate needs to regenerate bpf/capture_bpfel.o
# (Debian 12's clang 14, llvm for llvm-strip, libbpf-dev, gcc-multilib for
# <asm/types.h>). Installing the toolchain took 13 s (31 MB) on the project's
# 2-core machine, which already had llvm-14; a machine without llvm-14 also
# downloads its 36 MB.
set -euo pipefail
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
if ! clang --version 2>/dev/null | grep -q 'clang version 14\.'; then
	missing+=(clang-14 clang)
fi
command -v llvm-strip >/dev/null || missing+=(llvm)
dpkg -s libbpf-dev >/dev/null 2>&1 || missing+=(libbpf-dev)
dpkg -s gcc-multilib >/dev/null 2>&1 || missing+=(gcc-multilib)
if [ ${#missing[@]} -gt 0 ]; then
	echo "system-deps: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	echo "system-deps: installed ${missing[*]}"
fi
