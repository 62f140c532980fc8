# slmc_hpc: `make install` builds everything on a fresh Debian 12 machine, `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SITE := $(VENV)/lib/python3.11/site-packages
# One MPI (Debian's OpenMPI) for mpi4py, parallel HDF5 and complex PETSc/SLEPc.
APT_PACKAGES := openmpi-bin libopenmpi-dev python3-mpi4py python3-h5py-mpi \
	python3-petsc4py-complex python3-slepc4py-complex libopenblas0-pthread \
	python3-venv python3-dev slurmctld slurmd slurm-client munge
PETSC_COMPLEX := /usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-complex/lib/python3/dist-packages
SLEPC_COMPLEX := /usr/lib/slepcdir/slepc3.18/x86_64-linux-gnu-complex/lib/python3/dist-packages
# Run as root on a 2-core machine: OpenMPI needs these (harmless elsewhere).
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export H5PY_ALWAYS_USE_MPI := 1

.PHONY: install install-gpu apt venv test test-cluster bench scaling lint demo demo-scan clean bench-scale bench-gauge

install: apt $(VENV)/.installed

# Installs only the Debian packages that are missing, so a second run is quick.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "Debian packages: all present"; fi

$(VENV)/bin/python:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

# pip never replaces Debian's numpy (numpy 2 breaks the Debian-built h5py/mpi4py/petsc4py ABI).
$(VENV)/.installed: $(VENV)/bin/python requirements.txt setup.py
	/usr/bin/python3 -c "import numpy; print('numpy==' + numpy.__version__)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -r requirements.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-deps pyerrors
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-deps --no-build-isolation -e .
	printf '%s\n%s\n' "$(PETSC_COMPLEX)" "$(SLEPC_COMPLEX)" > $(SITE)/slmc_complex_petsc.pth
	$(PY) tools/check_stack.py
	touch $@

# CuPy for `evaluator.kind: cupy` on a GPU node (README, "GPU nodes"): CUPY is the wheel for the node's CUDA,
# cupy-cuda11x, cupy-cuda12x or cupy-cuda13x. numpy stays Debian's (constraint file); CuPy 14 needs numpy 2,
# so next to numpy 1.x CuPy is pinned below 14 (else pip walks back through ~790 MB of wheels to find that).
CUPY ?= cupy-cuda12x
install-gpu: install
	@pin=$$($(PY) -c "import numpy; print('<14' if numpy.__version__.startswith('1.') else '')"); \
	echo "pip install $(CUPY)$$pin (numpy pinned)"; \
	$(PY) -m pip install -q -c $(VENV)/constraints.txt "$(CUPY)$$pin"
	$(PY) -c "import cupy; print('cupy', cupy.__version__, 'installed; on a GPU node check it: OMP_NUM_THREADS=1 $(PY) -m pytest -m gpu tests')"

test: install
	$(PY) -m ruff check slmc_hpc tests tools
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The real-SLURM tests (slurmctld/slurmd/munge on localhost); part of `make test` too.
test-cluster: install
	$(PY) -m pytest -q tests -m cluster

bench: install
	$(PY) tools/bench_evaluators.py
	$(PY) tools/bench_slmc.py

# Whole runs, training included, at L = 8, 12, 16 against the exact local MC and all-shell linear SLMC
# (about 100 minutes on 2 cores with the SLHMC rows, 84 without; run it alone on the machine).
# L = 24, documented in the README from one run:
# tools/bench_scale.py --sizes 24 --models transformer --measurements 300 --exact-sweeps 1 --exact-chains-per-rank 1
bench-scale: install
	$(PY) tools/bench_scale.py --sizes 8 12 16 --hmc-lengths 1 1.5 2

# Exact HMC of SU(2) with staggered fermions, dense against cg, at 4^4, 6^4, 8^4 (about 35 minutes, run it alone).
bench-gauge: install
	$(PY) tools/bench_gauge.py

# Weak and strong scaling over MPI rank counts (tools/scaling.py --help for a cluster's rank counts).
scaling: install
	$(PY) tools/scaling.py --repeat 3

lint: install
	$(PY) -m ruff check slmc_hpc tests tools

# A real small job on the embedded default configuration (6x6, 2-layer transformer SLMC) on 2 ranks;
# it ends with its results table. runs/demo is a scratch directory: it is started afresh each time.
demo: install
	rm -rf runs/demo
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun -n 2 $(VENV)/bin/python -m mpi4py -m slmc_hpc run
	$(VENV)/bin/slmc-hpc plot runs/demo

# A small temperature scan as one job (3 points of 4x4, linear SLMC) on 2 ranks: the merged table and the scan plot.
demo-scan: install
	rm -rf runs/demo_scan
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun -n 2 $(VENV)/bin/python -m mpi4py -m slmc_hpc run jobs/examples/demo_scan.yaml
	$(VENV)/bin/slmc-hpc analyze runs/demo_scan
	$(VENV)/bin/slmc-hpc plot runs/demo_scan

clean:
	rm -rf $(VENV) build *.egg-info
