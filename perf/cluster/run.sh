#!/usr/bin/env bash
# Runs the perf suite's comparisons on a real cluster: Fortio client and
# server in a namespace without mesh and in one enrolled in mazu-ztunnel
# (istio.io/dataplane-mode=ambient), side by side in shuffled order over
# several rounds, and prints medians and per-round mesh/plain ratios.
#
# Needs: kubectl pointed at a cluster with mazu-ztunnel installed, jq,
# envsubst, and metrics-server for the proxy CPU samples.
#
#   CLIENT_NODE=node-a SERVER_NODE=node-b ./run.sh
#
# Same-node: set CLIENT_NODE and SERVER_NODE to the same node.
set -euo pipefail

: "${CLIENT_NODE:?set CLIENT_NODE to the client node name}"
: "${SERVER_NODE:?set SERVER_NODE to the server node name}"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-60s}
CONNS=${CONNS:-"1 4 16 64"}
QPS=${QPS:-1000}
ZTUNNEL_NS=${ZTUNNEL_NS:-istio-system}
# The chart labels the node-agent pods app=<resourceName>, mazu-ztunnel by
# default; Istio's own ztunnel pods carry app=ztunnel.
ZTUNNEL_SELECTOR=${ZTUNNEL_SELECTOR:-app=mazu-ztunnel}
# CPU samples: one every SAMPLE_EVERY seconds while a load runs, at most
# SAMPLE_MAX per run.
SAMPLE_EVERY=${SAMPLE_EVERY:-15}
SAMPLE_MAX=${SAMPLE_MAX:-40}
OUT=${OUT:-cluster-results-$(date -u +%Y%m%dT%H%M%SZ)}
PLAIN_NS=${PLAIN_NS:-mazu-perf-plain}
MESH_NS=${MESH_NS:-mazu-perf-mesh}
HERE=$(cd "$(dirname "$0")" && pwd)
export CLIENT_NODE SERVER_NODE

mkdir -p "$OUT"

setup() {
  local ns=$1 mesh=$2
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  if [[ $mesh == yes ]]; then
    kubectl label namespace "$ns" istio.io/dataplane-mode=ambient --overwrite
  else
    kubectl label namespace "$ns" istio.io/dataplane-mode- >/dev/null 2>&1 || true
  fi
  envsubst <"$HERE/fortio-server.yaml" | kubectl -n "$ns" apply -f -
  envsubst <"$HERE/fortio-client.yaml" | kubectl -n "$ns" apply -f -
  kubectl -n "$ns" rollout status deploy/fortio-server --timeout=180s
  kubectl -n "$ns" rollout status deploy/fortio-client --timeout=180s
}

load() {
  # load NS NAME ARGS... runs fortio load in the client pod and stores JSON.
  local ns=$1 name=$2
  shift 2
  kubectl -n "$ns" exec deploy/fortio-client -- fortio load -json - -quiet "$@" >"$OUT/$name.json"
}

ztunnel_cpu() {
  # Sum of the ztunnel pods' CPU in millicores, as metrics-server reports it.
  kubectl top pod -n "$ZTUNNEL_NS" -l "$ZTUNNEL_SELECTOR" --no-headers --request-timeout=10s 2>/dev/null |
    awk '{gsub("m","",$2); s+=$2} END {print s+0}'
}

seconds() {
  # seconds 90s|2m|1h prints the duration in whole seconds.
  local d=$1
  case $d in
  *h) echo $((${d%h} * 3600)) ;;
  *m) echo $((${d%m} * 60)) ;;
  *s) echo "${d%s}" ;;
  *) echo "$d" ;;
  esac
}

sample_cpu() {
  # sample_cpu FILE COUNT appends one ztunnel CPU sum per line to FILE,
  # every SAMPLE_EVERY seconds, COUNT times at most. The first sample is
  # taken one interval into the run, so that it covers load.
  local file=$1 count=$2 i
  for ((i = 0; i < count; i++)); do
    sleep "$SAMPLE_EVERY"
    ztunnel_cpu >>"$file"
  done
}

SAMPLER=
stop_sampler() {
  if [[ -n $SAMPLER ]]; then
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=
  fi
}
trap stop_sampler EXIT

load_sampled() {
  # load_sampled NS NAME ARGS... runs load with the CPU sampler in the
  # background, bounded by the run's duration and SAMPLE_MAX, and stops it
  # when the load ends.
  local ns=$1 name=$2 n
  n=$(($(seconds "$DURATION") / SAMPLE_EVERY))
  if ((n > SAMPLE_MAX)); then n=$SAMPLE_MAX; fi
  : >"$OUT/$name.ztunnel-mcpu"
  if ((n > 0)); then
    sample_cpu "$OUT/$name.ztunnel-mcpu" "$n" &
    SAMPLER=$!
  fi
  load "$@"
  stop_sampler
}

median() {
  sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

setup "$PLAIN_NS" no
setup "$MESH_NS" yes

for round in $(seq 1 "$ROUNDS"); do
  for ns in $(printf '%s\n' "$PLAIN_NS" "$MESH_NS" | shuf); do
    url=http://fortio-server.$ns:8080/echo
    for c in $CONNS; do
      for jitter in false true; do
        name="r${round}-${ns}-http-c${c}-jitter-${jitter}"
        load_sampled "$ns" "$name" -qps "$QPS" -c "$c" -t "$DURATION" -r 0.00001 -p 50,90,99,99.9 \
          -payload-size 1024 -jitter="$jitter" "$url"
      done
    done
    load "$ns" "r${round}-${ns}-tcp-1b" -qps -1 -n 20000 -r 0.00001 -p 50,90,99 -payload-size 1 "tcp://fortio-server.$ns:8078"
    load "$ns" "r${round}-${ns}-tcp-1k" -qps -1 -n 20000 -r 0.00001 -p 50,90,99 -payload-size 1024 "tcp://fortio-server.$ns:8078"
  done
done

# Per-round mesh/plain ratios of p50/p90/p99, then their medians.
summary() {
  local kind=$1
  for p in 50 90 99; do
    ratios=()
    for round in $(seq 1 "$ROUNDS"); do
      a=$(jq ".DurationHistogram.Percentiles[] | select(.Percentile == $p) | .Value" "$OUT/r${round}-${MESH_NS}-${kind}.json")
      b=$(jq ".DurationHistogram.Percentiles[] | select(.Percentile == $p) | .Value" "$OUT/r${round}-${PLAIN_NS}-${kind}.json")
      ratios+=("$(echo "$a $b" | awk '{printf "%.4f", $1/$2}')")
      deltas+=("$(echo "$a $b" | awk '{printf "%.1f", ($1-$2)*1e6}')")
    done
    med=$(printf '%s\n' "${ratios[@]}" | median)
    dmed=$(printf '%s\n' "${deltas[@]}" | median)
    echo "$kind p$p: mesh/plain median ${med}x, mesh-plain median ${dmed} us (rounds: ${ratios[*]})"
    deltas=()
  done
}

deltas=()
{
  echo "# mazu-ztunnel on a cluster: $ROUNDS rounds, client $CLIENT_NODE, server $SERVER_NODE"
  for c in $CONNS; do
    for jitter in false true; do summary "http-c${c}-jitter-${jitter}"; done
  done
  summary tcp-1b
  summary tcp-1k
  for ns in "$PLAIN_NS" "$MESH_NS"; do
    for c in $CONNS; do
      # The median of all samples taken during this namespace's c runs.
      m=$(cat "$OUT"/r*-"$ns"-http-c"$c"-jitter-*.ztunnel-mcpu 2>/dev/null | median)
      echo "$ns c=$c: ztunnel CPU (millicores, all pods) median $m over the samples taken during its HTTP runs"
    done
  done
  echo "Samples are in $OUT/*.ztunnel-mcpu, one per line; divide by the achieved QPS/1000 for vCPU per 1000 rps."
} | tee "$OUT/summary.txt"
