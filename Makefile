# ATF Broker. The two commands a newcomer needs:
#   make demo   builds what it needs and runs the demo on a local SPIRE + Vault + atfd
#   make test   runs every test, including those against real SPIRE and Vault
# and extras: make demo-ha runs three atfd replicas on etcd, kills one;
# make console opens the web console on the dev stack.
#
# Pinned tools are built once into $(ATF_TOOLS_CACHE) (default
# ~/.cache/atf-tools) and linked into bin/, each target building only those
# it uses: demo-tools (Vault 1.14.2, SPIRE 1.13.3, etcd 3.6.16, and
# PostgreSQL from Debian's postgresql package, installed with apt-get when
# missing if run as root) for the demos, bench and soak; dev-tools (those
# and Chromium, Debian's chromium package, for the console's browser
# tests) for test; proto-tools (buf and the protoc plugins) for proto and
# lint; tools for all of them.

SHELL := /bin/bash
export PATH := $(CURDIR)/bin:$(PATH)
GO ?= go
TEST_FLAGS ?= -race -count=1 -timeout 30m

.PHONY: all tools demo-tools dev-tools proto-tools proto proto-check proto-breaking build test demo demo-ha console lint bench clean fuzz soak

all: build

# install.sh is a cached no-op once a tool is built for its pinned version.
tools: dev-tools proto-tools

demo-tools:
	./deploy/dev/tools/install.sh spire vault etcd postgres

dev-tools: demo-tools
	./deploy/dev/tools/install.sh chromium

proto-tools:
	./deploy/dev/tools/install.sh proto

proto: proto-tools
	buf generate

# Fails when the committed generated code differs from what `make proto` makes.
proto-check: proto
	@git diff --exit-code -- proto/ && test -z "$$(git status --porcelain -- proto/)" \
		|| { echo "generated code in proto/ is stale: run 'make proto' and commit"; exit 1; }

# Breaking-change check (FILE rules) against a git ref, default main.
AGAINST ?= .git\#branch=main
proto-breaking: proto-tools
	buf breaking --against '$(AGAINST)'

build:
	$(GO) build -o bin/atfd ./cmd/atfd
	$(GO) build -o bin/atfctl ./cmd/atfctl

# deploy/k8s is a module of its own (the Kubernetes API packages stay out of
# the broker's go.mod); it reaches the broker through a replace of ../.., so
# a change to the root go.mod needs `go mod tidy` there too.
# The store's tests run twice: on a bbolt file (with everything else) and
# on a real three-member etcd cluster (ATF_STORE_ENGINE=etcd).
test: dev-tools
	$(GO) test $(TEST_FLAGS) ./...
	ATF_STORE_ENGINE=etcd $(GO) test $(TEST_FLAGS) ./broker/store/
	cd deploy/k8s && $(GO) test $(TEST_FLAGS) ./...

demo: demo-tools build
	$(GO) run ./deploy/dev/demo

# The web console on the dev stack, with a local OpenID provider and two
# demo people (docs/console.md); runs until Ctrl-C.
console: demo-tools build
	$(GO) run ./deploy/dev/demo -console

# The high-availability demo: three atfd replicas on a three-member etcd
# cluster, the one serving an agent killed (the agent carries on), a
# lineage revoked on one replica heard through another.
demo-ha: demo-tools build
	$(GO) run ./deploy/dev/demo -ha

lint: proto-tools
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	cd deploy/k8s && $(GO) vet ./...
	buf lint

# make bench runs the benchmark suite (the broker's against the dev stack's
# real SPIRE and Vault, one iteration each since they take their samples
# per iteration; the in-process micro-benchmarks as usual) and writes
# BENCHMARKS.md: every row a ratio to a baseline of the same run. About
# 20 minutes on 2 cores. BENCH=REGEXP runs only the benchmarks matching it
# (go test -bench) and keeps the other figures of BENCHMARKS.md, e.g.
# `make bench BENCH=^BenchmarkHA` (about 3 minutes).
bench: demo-tools
	$(GO) run ./deploy/dev/benchreport -go $(GO) -o BENCHMARKS.md $(if $(BENCH),-bench '$(BENCH)')

# The broker's load test at soak size (TestSoak: 50,000 agents, 2,000
# callers with their revocation streams) for SOAK_DURATION.
SOAK_DURATION ?= 10m
soak: demo-tools
	ATF_SOAK=1 ATF_SOAK_DURATION=$(SOAK_DURATION) $(GO) test -race -count=1 -timeout 60m -run '^TestSoak$$' -v ./broker/

# Every fuzz target runs for FUZZTIME (their seed corpora already run in
# make test). New findings land in the package's testdata/fuzz: commit them.
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$f ($$pkg, $(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -f bin/atfd bin/atfctl
