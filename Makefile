# mcp-router: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_FILES := $(sort $(wildcard protos/mcprouter/v1/*.proto))
GEN := generated/python

.PHONY: run test install generate check-generated lint typecheck check unit integration e2e clean

# Idempotent install: re-runs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## run: set up everything and serve on the embedded default (port 50051).
run: install
	$(BIN)/mcp-router serve

## test: install, check the contract and the code, run the whole suite.
test: install check
	$(BIN)/pytest -q

## generate: rewrite the committed generated code from the protos.
generate: install
	rm -rf $(GEN)/mcprouter/v1
	$(BIN)/buf generate
	$(BIN)/buf build --exclude-imports -o $(GEN)/mcprouter/v1/descriptor_set.binpb
	$(PY) -m grpc_tools.protoc -I protos \
		--grpc_python_out=$(GEN) \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_grpc_out=quiet:$(GEN) \
		protos/mcprouter/v1/router_service.proto

## check-generated: fail when the protos and the committed code disagree.
check-generated: generate
	@git add -N $(GEN) 2>/dev/null || true
	@git diff --exit-code --stat -- $(GEN) || \
		(echo "generated code is out of date: run 'make generate' and commit" >&2; exit 1)

lint: install
	$(BIN)/buf lint
	@if git rev-parse --verify --quiet main >/dev/null; then \
		$(BIN)/buf breaking --against '.git#branch=main'; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: check-generated lint typecheck

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

e2e: install
	$(BIN)/pytest -q tests/e2e

clean:
	rm -rf $(VENV) .mcp-router .pytest_cache .mypy_cache .ruff_cache
