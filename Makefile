# tenantgate: `make run` serves the example registry on 127.0.0.1:50051; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := .tenantgate
REGISTRY ?= sqlite://$(DATA)/registry.db
MASTER_KEY ?= $(DATA)/master.key
LISTEN ?= 127.0.0.1:50051
INSTALLED := $(VENV)/.installed
# `make test` builds the wheel users install and runs the integration tests against it, installed
# (not editable) into a virtualenv of its own made afresh each time (build/ goes first: setuptools would
# otherwise pack what a previous build left in build/lib).
WHEELS := build/wheels
TEST_VENV := build/installed-venv

.PHONY: venv run test lint protos bench soak certs clean mutate
SOAK_SECONDS ?= 600

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: venv
	@test -f $(MASTER_KEY) || { $(BIN)/tenantgate master-key $(MASTER_KEY) && \
		echo "(a development master key: for real deployments make your own and keep it out of the data directory)"; }
	TENANTGATE_MASTER_KEY_FILE=$(MASTER_KEY) $(BIN)/tenantgate apply -f examples/manifests --registry $(REGISTRY)
	@echo "(development mode: loopback only, callers named by x-tenantgate-caller, the Admin API open to you, Ctrl-C stops at once)"
	TENANTGATE_MASTER_KEY_FILE=$(MASTER_KEY) $(BIN)/tenantgate serve --registry $(REGISTRY) --listen $(LISTEN) \
		--drain-delay 0 --trust-caller-metadata --admin "cli:$$($(BIN)/python -c 'import getpass; print(getpass.getuser())')"

test: venv
	$(BIN)/python -m pytest -q tests/unit
	rm -rf build
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(WHEELS) .
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TEST_VENV)/bin/python -m pip install --quiet "$$(ls $(WHEELS)/tenantgate-*.whl)[test]"
	TENANTGATE_TEST_INSTALLED=1 $(TEST_VENV)/bin/python -m pytest -q tests/integration

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

# Regenerates generated/ from protos/ byte for byte (grpcio-tools is pinned exactly in pyproject.toml).
protos: venv
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=generated --pyi_out=generated \
		--grpc_python_out=generated $(sort $(wildcard protos/tenantgate/v1/*.proto))

# Benchmarks are never part of `make test`; results go to benchmarks/results/. The gRPC load runs need
# h2load (Debian: apt-get install nghttp2-client) and use Redis on 127.0.0.1:6379 when it is there; the cluster
# benchmark starts its own redis-server nodes (needs redis-server and redis-cli), the replicas one PostgreSQL.
bench: venv
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/engine_bench.py
	$(BIN)/python benchmarks/peers_bench.py
	$(BIN)/python benchmarks/handler_bench.py
	$(BIN)/python benchmarks/registry_scale.py
	$(BIN)/python benchmarks/subject_tenants_bench.py
	$(BIN)/python benchmarks/replicas_bench.py
	$(BIN)/python benchmarks/sdk_bench.py
	$(BIN)/python benchmarks/stream_bench.py
	@if command -v h2load >/dev/null; then $(BIN)/python benchmarks/grpc_bench.py && \
	$(BIN)/python benchmarks/workers_bench.py && \
	$(BIN)/python benchmarks/gateway_bench.py && \
	$(BIN)/python benchmarks/cluster_bench.py; \
	else echo "h2load not found: apt-get install -y nghttp2-client for the gRPC load benchmarks"; fi

# Mixed load against a real server for SOAK_SECONDS (default 600); fails on any error or RSS that keeps growing.
soak: venv
	$(BIN)/python benchmarks/soak.py --seconds $(SOAK_SECONDS)

# A development CA, a localhost server certificate and client certificates under .tenantgate/certs.
certs: venv
	$(BIN)/tenantgate certs dev --out $(DATA)/certs

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Mutation testing of the decision code (engines/, policy.py, globs.py, counters/memory.py) against the fast tests
# that exercise it, with mutmut as configured under [tool.mutmut] in pyproject.toml: prints the kill rate per module
# and writes benchmarks/results/mutation.json with the survivors. Slow (about half an hour on two cores):
# MUTATE_CHILDREN sets the parallelism, MUTANTS narrows the run to some mutants (e.g. MUTANTS='tenantgate.globs*').
MUTATE_CHILDREN ?= 2
MUTANTS ?=
mutate: venv
	$(BIN)/python -m pip install --quiet -e '.[dev,mutate]'
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTATE_CHILDREN) $(MUTANTS)
	$(BIN)/python benchmarks/mutation_report.py
