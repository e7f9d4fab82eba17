# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LOCKS := images/trainer/requirements.lock images/operator/requirements.lock requirements-dev.lock
STAMP := $(VENV)/.installed

.PHONY: crds venv test test-chaos test-unit test-e2e demo cluster cluster-down cluster-build clean

venv: $(STAMP)

$(STAMP): $(LOCKS) trainer/pyproject.toml operator/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet $(addprefix -r ,$(LOCKS))
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e trainer -e operator
	touch $@

# Unit tests, trainer tests with real torchrun processes, then the end-to-end suite on a real control plane
# (built first, with its output shown: cold, it takes minutes, which no test's timeout should include).
test: venv cluster-build
	$(PY) -m pytest tests

# The operator chaos scenario of `make test` (50 jobs through operator kills, an apiserver restart and
# hand deletions; about 3 minutes each on a control plane of its own) once per seed:
#   make test-chaos CHAOS_SEEDS="1 2 3"
CHAOS_SEEDS ?= 20261128 1 2 3 4 5 6 7 8 9
test-chaos: venv cluster-build
	@for seed in $(CHAOS_SEEDS); do \
	  echo "== chaos seed $$seed"; \
	  MFT_CHAOS_SEED=$$seed $(PY) -m pytest tests/e2e/test_chaos.py -q -p no:cacheprovider || exit 1; \
	done

test-unit: venv
	$(PY) -m pytest tests -m "not e2e and not slow"

test-e2e: venv cluster-build
	$(PY) -m pytest tests/e2e

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/demo/run.sh

cluster-build:
	bash tests/e2e/cluster/build.sh

# A real control plane (apiserver, etcd, controller-manager, scheduler, KWOK, training-operator) for poking with kubectl.
cluster: venv cluster-build
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash tests/e2e/cluster/up.sh

cluster-down:
	bash tests/e2e/cluster/down.sh

clean:
	rm -rf $(VENV) .cluster

# The CRD is edited in crds/; the chart and the operator package carry identical copies.
crds:
	cp crds/mftjob.yaml charts/mft-operator/crds/mftjob.yaml
	cp crds/mftjob.yaml operator/mft_operator/crds/mftjob.yaml
