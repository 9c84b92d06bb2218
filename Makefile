# Quick start:  make train   |   make test
# Both create (or refresh, when pyproject.toml changes) the virtualenv in .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
MPIEXEC = $(VENV)/bin/mpiexec
# World sizes for the MPI test suite; 3 does not divide the test batches.
MPI_SIZES ?= 2 3 4
# Outer deadline for each mpiexec run of pytest: a hung rank can never hang CI.
MPI_TIMEOUT ?= 600
ARGS ?=

.PHONY: venv train test test-serial test-mpi bench bench-peers clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[mpi,dev,plot]'
	touch $@

train: venv
	$(PY) -m ddp_edf.train $(ARGS)

test: test-serial test-mpi

test-serial: venv
	$(PY) -m pytest -q -m "not mpi" tests

test-mpi: venv
	@for n in $(MPI_SIZES); do \
	  echo "== MPI suite, $$n ranks =="; \
	  timeout -k 10 $(MPI_TIMEOUT) $(MPIEXEC) -n $$n $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests || exit 1; \
	done

# Benchmarks (docs/performance.md).  bench-peers installs PyTorch and Chainer into .bench/ for the comparisons.
bench: venv bench-peers
	$(PY) benchmarks/step_throughput.py
	$(PY) benchmarks/throughput.py --plot docs/throughput.png
	$(PY) benchmarks/roofline.py
	$(PY) benchmarks/compare_torch_ddp.py
	$(PY) benchmarks/time_to_accuracy.py --plot docs/time_to_accuracy.png
	$(PY) benchmarks/deterministic.py
	$(PY) benchmarks/cnn_throughput.py
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/time_to_accuracy.py --model cnn --plot docs/time_to_accuracy_cnn.png
	@if [ "$$(id -u)" -eq 0 ]; then $(PY) benchmarks/network_scaling.py --plot docs/network_scaling.png; \
	else echo "network_scaling.py skipped: it needs root (network namespaces)"; fi

bench-peers:
	PYTHON=$(PYTHON) bash benchmarks/setup_peers.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
