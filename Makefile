# mcp-router: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_FILES := $(sort $(wildcard protos/mcprouter/v1/*.proto))
GEN := generated/python
TS_CLIENT := clients/typescript
GO_CLIENT := clients/go
CLIENT_GEN := $(TS_CLIENT)/src/gen $(GO_CLIENT)/gen
# Debian's Go toolchain, protoc plugins and Go library sources: there is no Go
# module proxy here, so the Go client builds in GOPATH mode against them.
GO_APT_PACKAGES := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
	golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev

.PHONY: run test install generate check-generated lint typecheck check unit integration e2e mutants clean go-deps promtool

# Idempotent install: re-runs only when a pyproject.toml changes. Both
# distributions are editable: the client (clients/python, which also puts
# generated/python on the path) and the server that depends on it.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./clients/python -e '.[dev]'
	touch $@

# Wheels of the client distribution's build backend and dependencies, so the
# test that installs the client alone into a fresh virtualenv runs offline.
WHEELHOUSE := $(VENV)/wheelhouse
$(WHEELHOUSE)/.complete: clients/python/pyproject.toml $(VENV)/.installed
	$(PY) -m pip wheel --quiet -w $(WHEELHOUSE) './clients/python' 'hatchling>=1.25'
	touch $@

install: $(VENV)/.installed $(WHEELHOUSE)/.complete

# Node packages of the TypeScript client, from its committed lock file.
$(TS_CLIENT)/node_modules/.package-lock.json: $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $@

go-deps:
	@if ! command -v go >/dev/null || ! command -v protoc-gen-go >/dev/null \
		|| ! command -v protoc-gen-go-grpc >/dev/null \
		|| ! test -f /usr/share/gocode/src/github.com/golang/protobuf/proto/registry.go \
		|| ! test -d /usr/share/gocode/src/google.golang.org/genproto/googleapis/rpc/errdetails; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(GO_APT_PACKAGES); fi

# promtool (Debian's prometheus package; its daemon is not started) checks and
# unit-tests deploy/prometheus/alerts.yml and the dashboard's queries.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus)

## run: set up everything and serve on the embedded default (port 50051).
run: install
	$(BIN)/mcp-router serve

## test: install, check the contract and the code, run the whole suite.
# Every toolchain is installed by now: a test that would skip for lack of one
# fails instead (tests/toolchains.py).
test: install check promtool
	MCPROUTER_TEST_REQUIRE_TOOLCHAINS=1 $(BIN)/pytest -q --durations=15

## generate: rewrite the committed generated code from the protos.
generate: install $(TS_CLIENT)/node_modules/.package-lock.json go-deps
	rm -rf $(GEN)/mcprouter/v1
	$(BIN)/buf generate
	# Imports included (google/protobuf/*.proto), so `protoc --descriptor_set_in`
	# can decode with it alone; the marker makes the generated stubs typed.
	$(BIN)/buf build -o $(GEN)/mcprouter/v1/descriptor_set.binpb
	touch $(GEN)/mcprouter/v1/py.typed
	$(PY) -m grpc_tools.protoc -I protos \
		--grpc_python_out=$(GEN) \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_grpc_out=quiet:$(GEN) \
		protos/mcprouter/v1/router_service.proto
	$(BIN)/buf generate --template $(TS_CLIENT)/buf.gen.yaml
	$(BIN)/buf generate --template $(GO_CLIENT)/buf.gen.yaml

## check-generated: fail when the protos and the committed code disagree.
check-generated: generate
	@git add -N $(GEN) $(CLIENT_GEN) 2>/dev/null || true
	@git diff --exit-code --stat -- $(GEN) $(CLIENT_GEN) || \
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

## mutants: mutation testing (mutmut) of the cache core, the write paths and
## ingestion; slow, so not part of `make test`. MUTANTS narrows the run to a
## glob of mutant names, e.g. MUTANTS='mcprouter.server.clickhouse.dedup.*'.
# mutmut names a module after its path minus a leading "src.", so it runs in
# $(MUTMUT_DIR), where src/ links to service/; results stay there between runs
# (a rerun tests only mutants whose function changed). One worker: the tests
# share one Redis and one PostgreSQL, and the machine has few cores.
MUTMUT_DIR := .mutmut
MUTANTS ?=
mutants: install
	mkdir -p $(MUTMUT_DIR)
	ln -sfn ../service $(MUTMUT_DIR)/src
	ln -sfn ../tests $(MUTMUT_DIR)/tests
	ln -sfn ../pyproject.toml $(MUTMUT_DIR)/pyproject.toml
	cd $(MUTMUT_DIR) && PYTHONPATH=$(CURDIR)/clients/python:$(CURDIR)/generated/python \
		$(CURDIR)/$(BIN)/mutmut run --max-children 1 $(MUTANTS)
	cd $(MUTMUT_DIR) && $(CURDIR)/$(BIN)/mutmut export-cicd-stats
	$(PY) tests/mutants/scores.py $(MUTMUT_DIR)/mutants

clean:
	rm -rf $(MUTMUT_DIR) $(VENV) .mcp-router .pytest_cache .mypy_cache .ruff_cache $(TS_CLIENT)/node_modules
