# berth: see README.md. Everything that touches the network runs inside
# network namespaces the target creates; nothing changes the machine's own.

GO        ?= go
# Every ./cmd/<name> is a binary; bin/<name> is where tests find it.
BINARIES  := $(notdir $(wildcard cmd/*))
BIN_DIR   := $(CURDIR)/bin

# install layout, overridable the usual way: make install DESTDIR=/tmp/pkg PREFIX=/usr
DESTDIR      ?=
PREFIX       ?= /usr/local
CNI_BIN_DIR  ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
# cniVersion of the installed example conflist: 1.0.0 works with every
# runtime in use; CNI_VERSION=1.1.0 for runtimes that call GC and STATUS.
CNI_VERSION  ?= 1.0.0

# The version `runner version` and `netd version` report
# (internal/version.Version); make build VERSION=1.2.0 to name a release.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

# Plugins are exec'd on every container start: static, stripped.
GOFLAGS_BUILD := -trimpath -ldflags='-s -w -X github.com/berthnet/berth/internal/version.Version=$(VERSION)'
export CGO_ENABLED = 0

# Tests need the binaries and find them here.
export BERTH_BIN_DIR = $(BIN_DIR)
TEST_TIMEOUT ?= 20m
FUZZTIME     ?= 10000x
FUZZLOG      := $(or $(TMPDIR),/tmp)/berth-fuzz-$(shell echo $$PPID).log

.PHONY: all build test test-ebpf test-unit test-reliability test-runtimes fuzz lint demo demo-clean bench bench-render install uninstall clean deps image test-k8s bpf bpf-check

all: build

build:
	@mkdir -p $(BIN_DIR)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN_DIR)/ $(addprefix ./cmd/,$(BINARIES))

# Unit, integration and end-to-end tests. They need root, the Debian
# packages .ci/run installs, and create their own namespaces.
test: build
	$(GO) test -count=1 -p 2 -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory test-ebpf
	@$(MAKE) --no-print-directory fuzz

# The plugin and end-to-end suites again on the eBPF datapath: the same
# tests must hold on both (BERTH_TEST_DATAPATH, see internal/testenv).
# The TestEBPF* tests choose that datapath themselves and ran already.
EBPF_TEST_PACKAGES := ./plugins/... ./test/e2e/
test-ebpf: build
	BERTH_TEST_DATAPATH=ebpf $(GO) test -count=1 -p 2 -timeout $(TEST_TIMEOUT) -skip '^TestEBPF' $(EBPF_TEST_PACKAGES)

# Fuzz targets, each for FUZZTIME (make test: 10000 inputs, a few seconds;
# e.g. make fuzz FUZZTIME=10m). make test counts inputs, not seconds: a run
# whose time ends while an input is being minimized fails with "context
# deadline exceeded" (a Go fuzzing quirk), which a count never hits.
# Minimizing each new input is capped at 200 runs: by default it may take
# 60s, and a 5s run would spend most of its time minimizing, not fuzzing.
FUZZ_TARGETS := FuzzParseBridge:./conf FuzzParseIPAM:./conf FuzzRead:./internal/lease FuzzLease:./netd/registry
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*} ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$${t%%:*}$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=200x -parallel=1 $${t#*:} >$(FUZZLOG) 2>&1 || { cat $(FUZZLOG); exit 1; }; \
	done

# The fault, churn and hostile-input suites (test/reliability) with every
# etcd member down for 60s (make test runs them with a 15s outage); -v
# prints the figures the README table reports (lines with FIGURE).
ETCD_OUTAGE ?= 60s
test-reliability: build
	@echo "go test ./test/reliability/ (etcd outage $(ETCD_OUTAGE)), log in /tmp/berth-reliability.log"
	@BERTH_ETCD_OUTAGE=$(ETCD_OUTAGE) $(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) ./test/reliability/ >/tmp/berth-reliability.log 2>&1; rc=$$?; \
	grep -E '^ *--- |^(ok|FAIL)|FIGURE|^ +[a-z_]+_test.go:[0-9]+: ' /tmp/berth-reliability.log; exit $$rc

# berth under real runtimes (test/runtimes): Debian's podman 4.3 with its
# CNI backend, and containerd's ctr, each in a private mount namespace and
# network namespaces the test makes, with a busybox image built locally;
# each test on the iptables and the eBPF datapath.
test-runtimes: build
	@echo "go test ./test/runtimes/, log in /tmp/berth-runtimes.log"
	@BERTH_TEST_RUNTIMES=1 $(GO) test -count=1 -v -timeout 10m ./test/runtimes/ >/tmp/berth-runtimes.log 2>&1; rc=$$?; \
	grep -E '^ *--- |^(ok|FAIL)|^ +[a-z_]+_test.go:[0-9]+: ' /tmp/berth-runtimes.log; exit $$rc

# make image: berth's container image (netd built with the Kubernetes
# datastore, -tags kubernetes, and the berth-* plugins from
# bin/) as an OCI image tar, written by a Go program, no container engine:
# load it with `ctr -n k8s.io images import bin/images/berth.tar`.
IMAGE ?= docker.io/berthnet/berth:dev
image: build
	$(GO) build $(GOFLAGS_BUILD) -tags kubernetes -o $(BIN_DIR)/kubernetes/netd ./cmd/netd
	$(GO) run ./deploy/image -bin $(BIN_DIR) -netd $(BIN_DIR)/kubernetes/netd -o $(BIN_DIR)/images/berth.tar -name $(IMAGE)

# make test-k8s: a real Kubernetes cluster (v$(K8S_VERSION) built from the Go
# module proxy into BERTH_K8S_CACHE, skipped when already there) on the test
# bed, berth installed from deploy/kubernetes in vxlan, hostgw and bgp mode.
# -v prints the figures (lines with FIGURE); the log is in /tmp/berth-k8s.log.
K8S_VERSION     ?= 1.37.2
BERTH_K8S_CACHE ?= $(CURDIR)/.cache/kubernetes
test-k8s: image
	@bin=$$(K8S_VERSION=$(K8S_VERSION) BERTH_K8S_CACHE=$(BERTH_K8S_CACHE) ./test/kubecluster/build-kubernetes.sh | tail -n 1) && \
	echo "go test ./test/k8s/ (Kubernetes binaries in $$bin), log in /tmp/berth-k8s.log" && \
	BERTH_K8S_BIN=$$bin $(GO) test -count=1 -v -timeout 45m ./test/k8s/ >/tmp/berth-k8s.log 2>&1; rc=$$?; \
	grep -E '^ *--- |^(ok|FAIL)|FIGURE|^ +[a-z_]+_test.go:[0-9]+: ' /tmp/berth-k8s.log; exit $$rc

test-unit:
	$(GO) test -count=1 -short ./...

lint: bpf-check
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags kubernetes ./cmd/netd
	@out=$$($(GO) mod tidy -diff 2>&1) || { echo "go.mod/go.sum not tidy (run go mod tidy):"; echo "$$out"; exit 1; }

# The eBPF programs (internal/fastpath/bpf/*.c, the eBPF datapath;
# internal/srcguard/bpf/*.c, the source guard) are compiled by clang
# through bpf2go into objects committed next to them, so that `go build`
# needs no clang. `make bpf` regenerates them; bpf-check (part of lint)
# compiles a copy and fails when the committed ones differ.
BPF_DIRS      := internal/fastpath internal/srcguard
BPF_CHECK_DIR := $(BIN_DIR)/bpf-check
BPF_INCLUDE   := internal/bpfinclude
bpf:
	for d in $(BPF_DIRS); do (cd $$d && $(GO) generate) || exit 1; done

bpf-check:
	@for d in $(BPF_DIRS); do \
		rm -rf $(BPF_CHECK_DIR) && mkdir -p $(BPF_CHECK_DIR)/$$d && cp -r $$d/gen.go $$d/bpf $(BPF_CHECK_DIR)/$$d/ && \
		cp -r $(BPF_INCLUDE) $(BPF_CHECK_DIR)/$(BPF_INCLUDE) && \
		(cd $(BPF_CHECK_DIR)/$$d && $(GO) generate) || exit 1; \
		for f in $$(cd $(BPF_CHECK_DIR)/$$d && ls *_bpfel.o *_bpfel.go); do \
			cmp -s $(BPF_CHECK_DIR)/$$d/$$f $$d/$$f || { echo "$$d/$$f is stale: run make bpf and commit it"; exit 1; }; \
		done; \
	done; rm -rf $(BPF_CHECK_DIR)

# Installs the Debian packages the demo and tests use, when missing.
deps:
	@./.ci/deps

# make demo: 3 nodes (namespaces), netd in vxlan mode, runner containers
# across nodes. MODE=hostgw the same with host-gw routes; MODE=bgp in bgp mode
# (full mesh, then two segments routed by BIRD); MODE=bridge the single-node
# bridge demo. DEMO_FLAGS are passed on, e.g. DEMO_FLAGS=-keep.
MODE       ?= vxlan
DEMO_FLAGS ?=
demo: deps build
	@if [ "$(MODE)" = bridge ]; then ./test/demo/demo.sh bridge; \
	else $(GO) build -o $(BIN_DIR)/demo ./test/demo/cmd/demo && $(BIN_DIR)/demo -mode $(MODE) $(DEMO_FLAGS) \
		$(if $(filter bgp,$(MODE)),&& $(BIN_DIR)/demo -mode bgp-bird $(DEMO_FLAGS)); fi

demo-clean:
	@./test/demo/demo.sh clean
	@$(GO) run ./test/demo/cmd/demo -clean

# A full run rewrites bench/results/ and the README's bench section; a
# quick run (BENCH_QUICK=1) writes bench/results/quick/ only.
bench: deps build
	$(GO) run ./bench/cmd/bench $(if $(BENCH_QUICK),-quick)

# The plots and the README's bench section again from the committed
# results (no measuring).
bench-render:
	$(GO) run ./bench/cmd/bench -render bench/results/results.json

install: build
	install -d $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNI_CONF_DIR)
	install -m 0755 $(addprefix $(BIN_DIR)/,$(filter berth-%,$(BINARIES))) $(DESTDIR)$(CNI_BIN_DIR)/
	$(if $(filter-out berth-%,$(BINARIES)),install -m 0755 $(addprefix $(BIN_DIR)/,$(filter-out berth-%,$(BINARIES))) $(DESTDIR)$(PREFIX)/bin/)
	sed 's/"cniVersion": "[^"]*"/"cniVersion": "$(CNI_VERSION)"/' conf/examples/10-berth-bridge.conflist >$(DESTDIR)$(CNI_CONF_DIR)/10-berth-bridge.conflist
	chmod 0644 $(DESTDIR)$(CNI_CONF_DIR)/10-berth-bridge.conflist

# Removes what install put in place (same DESTDIR, PREFIX, CNI_BIN_DIR and
# CNI_CONF_DIR). netd's state (/var/lib/berth, /run/berth) and the conflists
# netd wrote stay: `netd leave` on each node removes a node's part of a network.
uninstall:
	rm -f $(addprefix $(DESTDIR)$(CNI_BIN_DIR)/,$(filter berth-%,$(BINARIES)))
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(filter-out berth-%,$(BINARIES)))
	rm -f $(DESTDIR)$(CNI_CONF_DIR)/10-berth-bridge.conflist

clean:
	rm -rf $(BIN_DIR)
