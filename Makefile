# mazu-ztunnel build and test entry points. `make test` is what CI runs.

SHELL := /usr/bin/env bash
GO ?= go
# Cache folder for the control-plane binaries; keyed inside by versions.
export MAZU_K8S_CACHE ?= $(HOME)/.cache/mazu-k8s
TEST_TIMEOUT ?= 40m
FUZZTIME ?= 5s

.PHONY: all build images test unit-test testbed-bins system-deps fuzz fuzz-long vet clean demo perf-quick perf perf-run

all: build

build:
	$(GO) build -o bin/ ./cmd/...

# Registry and tag of the images; the tag defaults to the chart's appVersion, as the chart does.
IMAGE_HUB ?= ghcr.io/mazu-mesh
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' deploy/ambient/chart/Chart.yaml)
# The Dockerfile targets, one per image.
IMAGES := mazu-ztunnel mazu-cni mazu-curator
# Container tool for `make images`. Empty means the first of docker and podman that reaches its
# engine.
CONTAINER_TOOL ?=

## images: build the mazu-ztunnel, mazu-cni and mazu-curator images with docker or podman
images:
	@tool="$(CONTAINER_TOOL)"; \
	if [ -z "$$tool" ]; then \
	  for candidate in docker podman; do \
	    if command -v $$candidate >/dev/null && $$candidate info >/dev/null 2>&1; then tool=$$candidate; break; fi; \
	  done; \
	fi; \
	if [ -z "$$tool" ]; then \
	  echo "images: no working docker or podman: install one and start its engine, or set CONTAINER_TOOL" >&2; \
	  exit 1; \
	fi; \
	for image in $(IMAGES); do \
	  echo "images: building $(IMAGE_HUB)/$$image:$(IMAGE_TAG) with $$tool"; \
	  $$tool build --target $$image -t $(IMAGE_HUB)/$$image:$(IMAGE_TAG) . || exit 1; \
	done

## system-deps: install the Debian packages the tests call (iproute2, util-linux, clang 14 and libbpf-dev for bpf/)
system-deps:
	@.ci/system-deps.sh

## testbed-bins: build etcd, kube-apiserver, kube-controller-manager and istiod (cached)
testbed-bins:
	@.ci/k8s/build.sh all >/dev/null

## test: unit and integration tests, with the testbed, plus a short run of every fuzz target
test: system-deps testbed-bins vet
	MAZU_K8S_BIN=$$(.ci/k8s/build.sh dir) $(GO) test -p 2 -timeout $(TEST_TIMEOUT) -count=1 ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME)

## unit-test: tests that need neither root nor the testbed binaries
unit-test:
	$(GO) test -count=1 ./...

## demo: build what the showcase needs, then run it (root; see README "Demo")
demo: system-deps
	@echo "demo: [1/3] control-plane binaries (cached; a cold build takes about 22 min)"
	@.ci/k8s/build.sh all >/dev/null
	@echo "demo: [2/3] building mazu-ztunnel, mazu-cni, mazu-curator and mazu-demo into bin/"
	$(GO) build -o bin/ ./cmd/mazu-ztunnel ./cmd/mazu-cni ./cmd/mazu-curator ./cmd/mazu-demo
	@echo "demo: [3/3] running bin/mazu-demo"
	MAZU_K8S_BIN=$$(.ci/k8s/build.sh dir) bin/mazu-demo -bin bin

vet:
	$(GO) vet ./...

## fuzz: run each fuzz target for FUZZTIME (make fuzz-long runs them for 2 minutes each)
fuzz:
	@.ci/fuzz.sh $(FUZZTIME)

fuzz-long:
	@.ci/fuzz.sh 2m

## perf-quick: the performance suite in quick mode (root, 5 min 12 s measured once on a shared 2-CPU VM);
## 8 rounds, each variant running only the workloads its ratios and goals use;
## writes perf/RESULTS.md
perf-quick:
	@$(MAKE) --no-print-directory perf-run PERF_MODE=quick PERF_BENCH_COUNT=8

## perf: the full performance suite (root, about 1 hour 45 minutes, an estimate from quick mode's
## per-block times, not yet measured); 10 rounds of every workload, c=1,4,16,64 with and without jitter
perf:
	@$(MAKE) --no-print-directory perf-run PERF_MODE=full PERF_BENCH_COUNT=10

perf-run: SHELL := /usr/bin/env bash -o pipefail
perf-run:
	$(GO) build -o bin/mazu-perf ./perf/cmd/mazu-perf
	mkdir -p perf/results
	$(GO) test -run '^$$' -bench 'Ratio/(membership|kem)$$' -benchtime 20x -count $(PERF_BENCH_COUNT) ./rbeauth/rbe/ | tee perf/results/$(PERF_MODE)-micro.txt
	rm -f perf/results/$(PERF_MODE)-curator.txt
	if [ -d curator/server ]; then $(GO) test -run '^$$' -bench 'AgentUpdates/indexed' -benchtime 100x -count $(PERF_BENCH_COUNT) -timeout 30m ./curator/server | tee perf/results/$(PERF_MODE)-curator.txt; fi
	bin/mazu-perf run -mode $(PERF_MODE) -out perf/results -md perf/RESULTS.md -micro perf/results/$(PERF_MODE)-micro.txt -curator perf/results/$(PERF_MODE)-curator.txt

clean:
	rm -rf bin
