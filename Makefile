# valkey-dr — `make demo` and `make test` install what is missing, build, and run.
CARGO ?= cargo
BIN := target/release/valkey-dr
LAB_DIR ?= .valkey-dr-lab

VENV := target/venv
MOTO_VERSION := 5.2.5
CFN_LINT_VERSION := 1.58.0
# The official Prometheus client's OpenMetrics parser reads the controller's /metrics in the tests.
PROMETHEUS_CLIENT_VERSION := 0.23.1
VENV_STAMP := $(VENV)/.installed-$(MOTO_VERSION)-$(CFN_LINT_VERSION)-$(PROMETHEUS_CLIENT_VERSION)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := config info_replication events dns_request

.PHONY: all deps test-deps build demo test chaos fuzz bench lambda aws-demo lab-down clean clients deb

all: build

deps:
	@bash scripts/install-deps.sh

build:
	$(CARGO) build --release --locked -p valkey-dr

# The Debian package (target/debian/valkey-dr_<version>_<arch>.deb): binary, hardened service
# unit, example config, man page, docs, alert rules and dashboard.
deb: build
	bash scripts/build-deb.sh $(BIN)

demo: deps build
	@VALKEY_DR=$(BIN) LAB_DIR=$(LAB_DIR) bash scripts/demo.sh

# The AWS tests run Route 53 on a real moto server, and the template is checked by cfn-lint;
# both pinned, in a virtualenv.
$(VENV_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet 'moto[server]==$(MOTO_VERSION)' 'cfn-lint==$(CFN_LINT_VERSION)' 'prometheus-client==$(PROMETHEUS_CLIENT_VERSION)'
	touch $@

test-deps:
	@bash scripts/install-deps.sh --test

# The client writers of `valkey-dr drill --clients` (clients/README.md): each library pinned, in
# its own folder.
CLIENTS_STAMP := clients/.installed
$(CLIENTS_STAMP): clients/python/requirements.txt clients/node/package-lock.json
	python3 -m venv clients/python/.venv
	clients/python/.venv/bin/pip install --quiet -r clients/python/requirements.txt
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	touch $@

clients: $(CLIENTS_STAMP)
	$(CARGO) build --locked -p valkey-dr-client-redis-rs

test: test-deps $(VENV_STAMP) clients
	$(VENV)/bin/cfn-lint --regions us-east-2 us-west-2 -- deploy/aws/valkey-dr.yaml
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets --all-features -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --workspace --all-features --no-fail-fast; \
	else \
		$(CARGO) test --locked --workspace --all-features --no-fail-fast; \
	fi

# Fuzz every target for FUZZ_SECONDS each (libFuzzer via cargo-fuzz). New inputs go to
# fuzz/work/; commit the ones worth keeping to fuzz/corpus/ (or a crash to fuzz/regressions/),
# where `make test` replays them. cargo-fuzz passes nightly-only flags to rustc; on this stable
# toolchain RUSTC_BOOTSTRAP=1 allows them, for the fuzz build only.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/work/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: fuzz/work/$$t.log)"; \
		if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $$t work/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) > fuzz/work/$$t.log 2>&1; then \
			grep -E '^Done [0-9]+ runs' fuzz/work/$$t.log; \
		else \
			tail -n 30 fuzz/work/$$t.log; exit 1; \
		fi; \
	done

bench:
	bash bench/failover

# Every fault scenario CHAOS_RUNS times, each on a lab of its own; prints the table of medians.
CHAOS_RUNS ?= 3
chaos: test-deps build
	@# Both suites run whatever the first one's verdict; the target fails if either did.
	$(BIN) chaos --runs $(CHAOS_RUNS) --dir target/chaos --netns --keep-failed; replication=$$?; \
	$(BIN) chaos --cluster --netns --runs $(CHAOS_RUNS) --dir target/chaos-cluster --keep-failed; cluster=$$?; \
	test $$replication -eq 0 && test $$cluster -eq 0

# The Lambda artifact: the `bootstrap` executable of the provided.al2023 runtime, zipped. Built for
# an explicit target whatever the build machine is: cargo-zigbuild links against glibc 2.34 (Amazon
# Linux 2023's), and LAMBDA_ARCH picks the instruction set (arm64, the cheaper, when its Rust target
# is installed; else x86_64). `valkey-dr aws deploy` checks the zip's ELF machine and glibc before
# it uploads, and passes the architecture to the stacks.
ZIG_VERSION := 0.17.1
ZIGBUILD_VERSION := 0.24.1
LAMBDA_ARCH ?= $(shell rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$$' && echo arm64 || echo x86_64)
LAMBDA_TARGET = $(if $(filter arm64,$(LAMBDA_ARCH)),aarch64,x86_64)-unknown-linux-gnu

$(VENV)/.zigbuild-$(ZIG_VERSION)-$(ZIGBUILD_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet 'ziglang==$(ZIG_VERSION)' 'cargo-zigbuild==$(ZIGBUILD_VERSION)'
	touch $@

lambda: $(VENV)/.zigbuild-$(ZIG_VERSION)-$(ZIGBUILD_VERSION)
	@rustup target list --installed 2>/dev/null | grep -qx '$(LAMBDA_TARGET)' || \
		{ echo "Rust target $(LAMBDA_TARGET) is not installed: rustup target add $(LAMBDA_TARGET), or make lambda LAMBDA_ARCH=x86_64"; exit 1; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CARGO) zigbuild --release --locked -p valkey-dr-aws --bin bootstrap --target $(LAMBDA_TARGET).2.34
	mkdir -p target/lambda
	cp target/$(LAMBDA_TARGET)/release/bootstrap target/lambda/bootstrap
	cd target/lambda && rm -f valkey-dr-lambda.zip && python3 -m zipfile -c valkey-dr-lambda.zip bootstrap
	@echo "target/lambda/valkey-dr-lambda.zip: $(LAMBDA_ARCH), $$(strings target/lambda/bootstrap | grep -o '^GLIBC_2\.[0-9]*' | sort -t. -k2 -n | tail -1)"

# The AWS shape's event handling and promotion on a local moto server (after `make test`, which
# installs moto in target/venv).
aws-demo:
	$(CARGO) build --locked -p valkey-dr --features aws
	VALKEY_DR_BIN=target/debug/valkey-dr bash scripts/aws-moto-demo.sh

lab-down:
	@$(BIN) lab down --dir $(LAB_DIR)

clean: 
	-@$(BIN) lab down --dir $(LAB_DIR) 2>/dev/null
	$(CARGO) clean
