# mazu-ztunnel build and test entry points. `make test` is what CI runs.

SHELL := /usr/bin/env bash
GO ?= go
# Cache folder for the control-plane binaries; keyed inside by versions.
export MAZU_K8S_CACHE ?= $(HOME)/.cache/mazu-k8s
TEST_TIMEOUT ?= 40m
FUZZTIME ?= 5s

.PHONY: all build test unit-test testbed-bins system-deps fuzz fuzz-long vet clean demo

all: build

build:
	$(GO) build -o bin/ ./cmd/...

## system-deps: install the Debian packages the tests call (iproute2, util-linux)
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

clean:
	rm -rf bin
