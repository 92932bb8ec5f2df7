#!/usr/bin/env bash
# Builds the testbed's control-plane binaries from the Go module proxy into a
# cache folder keyed by the pinned module files and the Go version, and prints
# that folder. A binary already in the cache is reused. Builds run one at a
# time because each one already keeps both cores busy.
#
# Usage: build.sh [all|core|dir]
#   core: etcd, kube-apiserver, kube-controller-manager
#   all:  core plus istiod (pilot-discovery) and the Istio CRDs
#   dir:  print the cache folder without building anything
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
what=${1:-all}
cache=${MAZU_K8S_CACHE:-$HOME/.cache/mazu-k8s}
key=$(cat "$here"/kas/go.mod "$here"/kas/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum \
	"$here"/istio/go.mod "$here"/istio/go.sum "$here"/ldflags | sha256sum | cut -c1-16)-$(go env GOVERSION)
bin=$cache/$key
if [ "$what" = dir ]; then
	echo "$bin"
	exit 0
fi
mkdir -p "$bin"

# One build at a time per cache folder: concurrent runs (make demo and make
# test) would otherwise write the same $bin/$name.tmp. A run that waits finds
# the binaries cached once the other run is done.
lock=$cache/.lock
exec 9>"$lock"
if ! flock -n 9; then
	echo "testbed build: another build.sh has locked $lock; waiting for it to finish" >&2
	flock 9
fi

# build NAME MODULE_DIR PACKAGE LDFLAGS
build() {
	local name=$1 dir=$2 pkg=$3 ldflags=$4
	if [ -x "$bin/$name" ]; then
		echo "testbed build: $name cached in $bin" >&2
		return
	fi
	echo "testbed build: building $name from $pkg (cold builds take minutes; see README)" >&2
	local start=$SECONDS
	(
		cd "$here/$dir"
		go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg"
	) >"$bin/$name.build.log" 2>&1 &
	local pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 30
		kill -0 "$pid" 2>/dev/null && echo "testbed build: $name still building, $((SECONDS - start)) s so far" >&2
	done
	if ! wait "$pid"; then
		echo "testbed build: building $name failed; last lines of $bin/$name.build.log:" >&2
		tail -n 30 "$bin/$name.build.log" >&2
		rm -f "$bin/$name.tmp"
		exit 1
	fi
	mv "$bin/$name.tmp" "$bin/$name"
	echo "testbed build: built $name in $((SECONDS - start)) s" >&2
}

build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kas k8s.io/kubernetes/cmd/kube-apiserver "$(cat "$here/ldflags")"
build kube-controller-manager kas k8s.io/kubernetes/cmd/kube-controller-manager "$(cat "$here/ldflags")"
if [ "$what" = all ]; then
	build pilot-discovery istio istio.io/istio/pilot/cmd/pilot-discovery \
		"-s -w -X istio.io/istio/pkg/version.buildVersion=0.0.0-20260827124520-eed52ebb66ad"
	if [ ! -f "$bin/istio-crds.yaml" ]; then
		if ! mod=$(cd "$here/istio" && go list -m -f '{{.Dir}}' istio.io/istio) || [ -z "$mod" ]; then
			echo "testbed build: copying the Istio CRDs failed: \`go list -m istio.io/istio\` in $here/istio found no module folder" >&2
			exit 1
		fi
		crds=$mod/manifests/charts/base/files/crd-all.gen.yaml
		if ! cp "$crds" "$bin/istio-crds.yaml.tmp"; then
			echo "testbed build: copying the Istio CRDs failed: cannot copy $crds to $bin" >&2
			rm -f "$bin/istio-crds.yaml.tmp"
			exit 1
		fi
		mv "$bin/istio-crds.yaml.tmp" "$bin/istio-crds.yaml"
	fi
fi
echo "$bin"
