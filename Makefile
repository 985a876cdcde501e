# Corral: the two quick-start commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test unit e2e bench bench-latency gen clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A local coordinator on an embedded LMDB store with two demo actors.
run: venv
	$(PY) -m coordinator.local_cluster

test: venv
	$(PY) -m pytest -q

unit: venv
	$(PY) -m pytest -q tests/unit

e2e: venv
	$(PY) -m pytest -q tests/e2e

bench: venv
	$(PY) -m tests.bench.throughput
	$(PY) -m tests.bench.throughput --mode latency

# Regenerate proto/corral/v1/*_pb2*.py after editing a .proto (the generated code is committed).
gen: venv
	$(PY) tools/gen_proto.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The dev overlay's Kubernetes configuration (deploy/overlays/dev) run as local processes: 1
# coordinator + its actors, configured only by the manifests' environment (needs kubectl).
.PHONY: cluster
cluster: venv
	$(PY) tools/k8s_stand_in.py

# The Node.js client (clients/node): install its pinned packages, generate its stubs from proto/,
# compile it. Then: node clients/node/dist/src/submit_and_watch.js localhost:7070 echo '{"from":"node"}'
.PHONY: client-node
client-node: venv
	cd clients/node && npm ci --no-audit --no-fund && PYTHON=$(abspath $(PY)) node scripts/gen.mjs && node node_modules/typescript/bin/tsc -p tsconfig.json
