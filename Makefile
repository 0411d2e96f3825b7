# valkey-dr — `make demo` and `make test` install what is missing, build, and run.
CARGO ?= cargo
BIN := target/release/valkey-dr
LAB_DIR ?= .valkey-dr-lab

.PHONY: all deps build demo test lint fmt lab-down clean

all: build

deps:
	@bash scripts/install-deps.sh

build:
	$(CARGO) build --release --locked -p valkey-dr

demo: deps build
	@VALKEY_DR=$(BIN) LAB_DIR=$(LAB_DIR) bash scripts/demo.sh

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --workspace --no-fail-fast; \
	else \
		$(CARGO) test --locked --workspace --no-fail-fast; \
	fi

lab-down:
	@$(BIN) lab down --dir $(LAB_DIR)

clean: 
	-@$(BIN) lab down --dir $(LAB_DIR) 2>/dev/null
	$(CARGO) clean
