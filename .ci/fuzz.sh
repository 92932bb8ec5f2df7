#!/usr/bin/env bash
# Runs every Go fuzz target in the module for the given time each.
# Usage: fuzz.sh DURATION
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-5s}
count=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "fuzz: $pkg $target for $duration"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$duration" "$pkg" >/tmp/mazu-fuzz.log 2>&1 || {
			cat /tmp/mazu-fuzz.log
			echo "fuzz: $pkg $target failed"
			exit 1
		}
		count=$((count + 1))
	done
done
echo "fuzz: $count targets ran for $duration each"
