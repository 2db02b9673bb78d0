# One command each: `make run` sets up and runs the default experiment, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: setup run test test-fast lint slurm-test bench clean-results

$(BIN)/snakemake: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

FASHION_MNIST := /usr/share/datasets/fashion-mnist

# Fashion-MNIST ships as a Debian package; installed when we can (root + apt), else its tests skip.
$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "note: could not install dataset-fashion-mnist; its tests will be skipped"; \
	else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST data"; fi

setup: $(BIN)/snakemake | $(FASHION_MNIST)

run: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

slurm-test: setup
	bash workflow/slurm/run_slurm_tests.sh

bench: setup
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_pipeline.py

clean-results:
	rm -rf results .snakemake
