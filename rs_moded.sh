#!/bin/bash
#SBATCH --job-name=rs_moded
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#
# The sweep: tasks x seeds x variants of a recipe (default: the default recipe, as modular_pipeline.sh), on
# Snakemake (workflow.py): on SLURM (one job per stage) when sbatch is on PATH, else here. `rs_moded.sh --help`.
# Every flag is also an environment variable (TASKS, SEEDS, RS_SBATCH_ARGS, ...; a flag wins).
set -euo pipefail

find_root() {  # under sbatch this script is a copy in the spool dir; the job record has the original
    local d job_cmd=""
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null 2>&1; then
        job_cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -1) || true
        [ -z "$job_cmd" ] || job_cmd=$(dirname "$job_cmd")
    fi
    for d in "${PIPELINE_ROOT:-}" "$(dirname "${BASH_SOURCE[0]}")" "$job_cmd" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if [ -n "$d" ] && [ -f "$d/modcomp/workflow.py" ] && [ -f "$d/run_superglue.py" ]; then (cd "$d" && pwd); return 0; fi
    done
    echo "$(basename "$0"): error: cannot find the repository (modcomp/workflow.py); set PIPELINE_ROOT" >&2
    return 1
}
ROOT=$(find_root)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHON PIPELINE_ROOT=$ROOT PYTHONUNBUFFERED=1
# threads: workflow.py gives each stage the SLURM job's (or this machine's) cores / --parallel, or OMP_NUM_THREADS if set
if [ ! -t 1 ] && [ -z "${TQDM_MININTERVAL:-}" ]; then export TQDM_MININTERVAL=30; fi  # quieter logs
exec "$PYTHON" -m modcomp.workflow_cli sweep "$@"
