# The README's commands. `make demo` and `make test` set up everything they need on a fresh Debian
# machine: Debian's dataset-fashion-mnist (apt), a virtual environment in $(VENV), and the package.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEPS_STAMP := $(VENV)/.deps-$(shell sha256sum pyproject.toml | cut -c1-16)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_MODEL := .cache/demo/base/config.json
DEMO_RETRAIN := .cache/demo/retrain/config.json
# On a CPU with AVX2, pin the kernels' instruction set (ATen, MKL's conditional numerical reproducibility, oneDNN) to
# it: ATen, MKL and oneDNN document that an AVX-512 CPU then sums floats in the AVX2 order, and MKL's STRICT mode makes
# its sums independent of where a tensor sits in memory (what was measured, and what not: README "Benchmarks").
# Other CPUs are left alone.
# Override on the command line (make test ATEN_CPU_CAPABILITY=avx512) to trade that for speed.
ifneq ($(shell grep -m1 -ow avx2 /proc/cpuinfo 2>/dev/null),)
export ATEN_CPU_CAPABILITY ?= avx2
export MKL_CBWR ?= AVX2,STRICT
export ONEDNN_MAX_CPU_ISA ?= AVX2
endif

.PHONY: demo test test-slow bench bench-all lint venv system clean
# Every folder under benchmarks/ (a test checks), validation rounds before the test runs they chose for.
BENCHMARKS := fashion_mnist_continual fashion_mnist_4shot_validation fashion_mnist_4shot_levers_validation \
	fashion_mnist_4shot_levers_validation_round3 fashion_mnist_4shot_levers_validation_round4 \
	fashion_mnist_4shot_levers_validation_round5 fashion_mnist_4shot_levers_validation_round6 \
	fashion_mnist_4shot_levers_validation_round7 fashion_mnist_4shot_seeds_validation \
	fashion_mnist_4shot_seeds_validation_round2 fashion_mnist_4shot_levers_validation_round8 \
	fashion_mnist_4shot_seeds fashion_mnist_4shot_order7_validation fashion_mnist_4shot_order42_validation \
	fashion_mnist_4shot_shots1_validation fashion_mnist_4shot_shots2_validation \
	fashion_mnist_4shot_base1_validation fashion_mnist_4shot_levers_validation_round9 \
	fashion_mnist_4shot_split1_validation fashion_mnist_4shot_draws \
	fashion_mnist_4shot fashion_mnist_baselines fashion_mnist_baselines_4shot \
	fashion_mnist_missing_validation fashion_mnist_missing_levers_validation \
	fashion_mnist_missing fashion_mnist_4shot_other_order fashion_mnist_missing_other_order \
	faces_base faces_4shot faces_missing_validation faces_missing faces_4shot_new_base_validation \
	faces_4shot_new_base_validation_round2 faces_4shot_new_base_validation_round3 \
	faces_4shot_new_base_validation_round4 faces_4shot_new_base faces_4shot_new_base_forget_group \
	faces_missing_new_base_validation faces_missing_new_base \
	fashion_mnist_det fashion_mnist_det_levers fashion_mnist_det_base_seed1 fashion_mnist_det_forget_less \
	fashion_mnist_det_forget_less_seed1 \
	verification_validation verification verification_faces_validation scale smoke
NAME ?= fashion_mnist_continual

demo: venv system $(DEMO_MODEL) $(DEMO_RETRAIN)
	rm -rf runs/demo
	$(VENV)/bin/gslora forget --config configs/demo_forget.yaml --out runs/demo
	$(VENV)/bin/gslora verify --run runs/demo --reference .cache/demo/retrain
	$(VENV)/bin/gslora gate --run runs/demo --max-acc-f 2 --max-mia-auc 0.6 --min-acc-r-ratio 0.95 || \
		echo "(the gate said no: the lines above name each threshold the model missed)"
	@echo "reports: runs/demo/report.md, runs/demo/report.html; the ledger: gslora requests list --run runs/demo"

# One pytest-xdist worker per usable core (nproc, which honours OMP_NUM_THREADS: unset here), at most 4 (each holds a small pre-trained model and data; tests/conftest.py gives
# each its share of the cores); a test file stays in one worker, so its module fixtures are built once; the files go
# out longest first (tests/conftest.py's SLOW_FILES), not by their number of tests (xdist's default).
TEST_WORKERS ?= $(shell n=$$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc); echo $$(( n < 4 ? n : 4 )))
test: venv system
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-slow: venv system
	$(PY) -m pytest -q -m slow

# One benchmark's committed results re-created from this checkout: make bench NAME=fashion_mnist_det
bench: venv system
	$(PY) benchmarks/run.py $(NAME)

# Every benchmark (verification reads ../shared/data/celeba_faces100); several hours on 2 CPU cores.
bench-all: venv system
	for b in $(BENCHMARKS); do $(PY) benchmarks/run.py $$b || exit 1; done
	$(PY) benchmarks/drift.py benchmarks/faces_missing
	$(PY) benchmarks/drift.py benchmarks/faces_missing_new_base
	$(PY) benchmarks/lookalike.py benchmarks/fashion_mnist_det_forget_less
	$(PY) benchmarks/lookalike.py benchmarks/fashion_mnist_det_forget_less_seed1
	$(PY) benchmarks/targets.py

lint: venv
	$(VENV)/bin/ruff check .

# Pre-train the demo's small Fashion-MNIST ViT once; later demos reuse it.
$(DEMO_MODEL): configs/demo_pretrain.yaml | venv system
	$(VENV)/bin/gslora pretrain --config configs/demo_pretrain.yaml --overwrite

# Its Retrain reference, once: the same recipe without the four classes the demo forgets.
$(DEMO_RETRAIN): configs/demo_retrain.yaml | venv system
	$(VENV)/bin/gslora pretrain --config configs/demo_retrain.yaml --overwrite

system: $(FASHION)

$(FASHION):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y dataset-fashion-mnist

$(PY):
	python3 -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && \
		python3 -m venv $(VENV); }

# Dependencies are reinstalled only when the content of pyproject.toml changes; the package is re-linked to
# this checkout when the venv's gslora is another checkout's, so a cached $(VENV) works for any clone.
# pip compiles the installed files to bytecode on one core (56 of its 113 s here); compileall does it on every core
# (31 s on 2). Like pip it skips files this Python cannot compile (torch ships a Python 3.12-only test file), hence
# the `|| true`. The bytecode matters: without it (PYTHONDONTWRITEBYTECODE) every process compiles torch again.
$(DEPS_STAMP): | $(PY)  # the name holds the hash of pyproject.toml: no timestamp check
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --no-compile -e '.[test]'
	$(PY) -m compileall -qq -j0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	rm -f $(VENV)/.deps-* && touch $@

venv: $(DEPS_STAMP)
	$(PY) -c 'import gslora, sys; sys.exit(not gslora.__file__.startswith("$(CURDIR)/src/"))' 2>/dev/null || \
		$(PY) -m pip install -q --no-deps -e .

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache
