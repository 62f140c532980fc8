#!/bin/bash
# Temperature scan: one run per temperature, all from base.yaml (only model.T and output.dir change).
#
#   jobs/examples/temperature_scan/scan.sh submit   # one SLURM job per T; each requeues itself until done
#   jobs/examples/temperature_scan/scan.sh local    # one T after the other, mpirun -n $NP here
#   jobs/examples/temperature_scan/scan.sh plot     # slmc-hpc analyze every run, then the scan figure
#
# Environment: TEMPERATURES ("0.02 0.04 ..."), OUT (runs/temperature_scan), NP (2, local only),
# PYTHON (python), SBATCH_ARGS (extra sbatch options), RUN_ARGS (extra --set options for every run).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
TEMPERATURES=${TEMPERATURES:-"0.02 0.04 0.06 0.08 0.1 0.15 0.2"}
OUT=${OUT:-runs/temperature_scan}
PYTHON=${PYTHON:-python}
read -r -a EXTRA <<< "${RUN_ARGS:-}"

overrides() { echo --set "model.T=$1" --set "output.dir=$OUT/T$1" "${EXTRA[@]}"; }

case "${1:-}" in
submit)
    for T in $TEMPERATURES; do
        # shellcheck disable=SC2046
        sbatch ${SBATCH_ARGS:-} --job-name="slmc-T$T" "$REPO/jobs/slurm/slmc.sbatch" "$HERE/base.yaml" $(overrides "$T")
    done ;;
local)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
    for T in $TEMPERATURES; do
        # shellcheck disable=SC2046
        mpirun -n "${NP:-2}" "$PYTHON" -m mpi4py -m slmc_hpc run "$HERE/base.yaml" $(overrides "$T")
    done ;;
plot)
    RUNS=()
    for T in $TEMPERATURES; do
        "$PYTHON" -m slmc_hpc analyze "$OUT/T$T" > /dev/null && RUNS+=("$OUT/T$T")
    done
    "$PYTHON" -c 'import sys; from slmc_hpc.plots import plot_scan; print(plot_scan(sys.argv[2:], sys.argv[1]))' \
        "$OUT/scan.png" "${RUNS[@]}" ;;
*)
    sed -n '2,10p' "$0"; exit 2 ;;
esac
