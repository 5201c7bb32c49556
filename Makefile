# Sigil. `make help` lists the targets.
SHELL := /usr/bin/env bash
GO ?= go
BIN := bin
CLANG ?= clang-16
BPF_CFLAGS := -O2 -g -mcpu=v3 -Wall -Werror -Wextra -Wno-unused-parameter -I/usr/include/x86_64-linux-gnu -target bpfel
TEST_FLAGS ?= -count=1 -timeout 30m
export SIGIL_CACHE_DIR ?= /var/cache/sigil

.PHONY: help setup generate build images test check lint verify-generated bench bench-datapath bench-policy bench-cni bench-controlplane bench-prefilter bench-multinode bench-services bench-lab demo lab lab-down clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: ## install clang, iproute2, iperf3... (Debian), mount bpffs, build/cache Kubernetes binaries
	hack/setup.sh

generate: ## regenerate bpf2go objects and bindings, deepcopy, CRDs, RBAC and the chart's copies of it
	$(GO) generate ./...
	$(GO) generate ./internal/charttest

build: ## build every command into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

images: ## OCI image tarballs (agent, operator, probe, pause) in _output/images, without a container engine
	$(GO) run ./cmd/sigil-images --out _output/images

test: ## run all tests (needs root: BPF and network namespaces)
	$(GO) test $(TEST_FLAGS) ./...

check: lint verify-generated test ## what CI runs after setup

lint: ## gofmt, go vet, and the BPF C with warnings as errors
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@for f in bpf/*.c; do $(CLANG) $(BPF_CFLAGS) -c $$f -o /dev/null || exit 1; done
	@echo "lint: ok"

verify-generated: generate ## fail if generated files differ from what is committed
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "generated files are stale or uncommitted; run 'make generate' and commit:"; \
		git status --porcelain; git diff --stat; exit 1; fi
	@echo "verify-generated: ok"

bench: bench-datapath bench-policy bench-cni bench-controlplane bench-prefilter bench-multinode bench-services bench-lab ## run every benchmark

bench-datapath: ## datapath: baseline vs Sigil vs iptables, per-packet cost
	$(GO) run ./cmd/sigil-bench datapath --markdown docs/performance.md

bench-policy: ## policy compiler: 1,000 policies x 10,000 identities x 5,000 endpoints; one new identity
	$(GO) test ./policy/ -run '^$$' -bench 'CompileAll' -benchmem -benchtime 1x
	$(GO) test ./policy/ -run '^$$' -bench 'Identity' -benchmem -benchtime 300x

bench-cni: ## sigil-cni ADD latency p50/p99 vs ptp + host-local
	SIGIL_BENCH=1 SIGIL_BENCH_OUT=$(CURDIR)/bench-cni.md $(GO) test ./cni -run TestBenchCNI -count=1 -v

bench-controlplane: ## policy implementation delay: 5 agents, 1,000 pods, 100 identities, 200 policies on one API server
	SIGIL_BENCH=1 $(GO) test ./agent/k8s -run TestBenchControlPlane -count=1 -v -timeout 20m

bench-prefilter: ## prefilter: XDP vs tc vs iptables raw under a UDP flood, 10/1,000/100,000 CIDRs
	$(GO) run ./cmd/sigil-bench prefilter --markdown docs/performance.md

bench-multinode: ## cross-node traffic: physical vs plain VXLAN vs Sigil tunnel and native
	$(GO) run ./cmd/sigil-bench multinode --markdown docs/performance.md

bench-lab: ## a real cluster per routing mode: pod start to Ready (50 pods), policy apply to enforcement, cross-node traffic vs node to node
	$(GO) build -o $(BIN)/sigil ./cmd/sigil
	$(GO) run ./cmd/sigil-bench lab --sigil $(BIN)/sigil --markdown docs/performance.md

bench-services: ## ClusterIP CRR and RR: Sigil's socket LB vs kube-proxy (iptables), 1/1,000/10,000 Services
	$(GO) run ./cmd/sigil-bench services --markdown docs/performance.md

demo: ## the datapath alone: one node and three pods in network namespaces, a policy, the matrix
	$(GO) run ./cmd/sigil demo

lab: ## the main job: a real 2-node cluster (containerd + kubelet per node) with Sigil installed by helm, then the demo
	$(GO) build -o $(BIN)/sigil ./cmd/sigil
	@if $(BIN)/sigil lab status >/dev/null 2>&1; then echo "lab: already up (sigil lab down to start over)"; else $(BIN)/sigil lab up; fi
	$(BIN)/sigil lab demo

lab-down: ## stop the lab and remove everything it made
	$(GO) build -o $(BIN)/sigil ./cmd/sigil
	$(BIN)/sigil lab down

clean: ## remove build output
	rm -rf $(BIN)
