#!/usr/bin/env bash
# Run the SLURM tests (tests/test_slurm.py) against a single-node SLURM cluster
# started on this machine, then stop the cluster again (also when the tests
# fail or the script is interrupted).  Exits with pytest's status.
#
#   sudo workflow/slurm/run_slurm_tests.sh [extra pytest arguments]
#
# Run as root from anywhere (it changes to the repository root), on a Debian 12
# machine (start_cluster.sh installs SLURM with apt-get).  Steps:
#
#   1. creates the virtualenv .venv-slurm in the repository root if it is
#      missing (or if requirements.lock / pyproject.toml changed since it was
#      made): the project's exact dependencies from requirements.lock, evomal
#      itself (editable, --no-deps) and snakemake-executor-plugin-slurm.  It is
#      kept separate from .venv on purpose: with the plugin installed, every
#      `snakemake` start queries the SLURM controller and waits ~9 s where none
#      answers, which would slow down the ordinary test suite;
#   2. starts the cluster (workflow/slurm/start_cluster.sh);
#   3. runs `python -m pytest -m slurm tests/test_slurm.py` with that venv's
#      python and its bin/ first on PATH (SLURM jobs inherit the environment,
#      sbatch --export=ALL);
#   4. stops the cluster (workflow/slurm/stop_cluster.sh) from an EXIT trap.
#
# Environment:
#   PYTHON               interpreter for creating the venv (default: python3)
#   EVOMAL_SLURM_VENV    venv path (default: <repo>/.venv-slurm)
#   EVOMAL_SLURM_KEEP=1  leave the cluster running afterwards (for debugging)
#   plus those of start_cluster.sh / stop_cluster.sh (EVOMAL_SLURM_DIR, ...)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"
VENV="${EVOMAL_SLURM_VENV:-$REPO/.venv-slurm}"
PYTHON="${PYTHON:-python3}"
PLUGIN="snakemake-executor-plugin-slurm==2.8.0"
JOBSTEP="snakemake-executor-plugin-slurm-jobstep==0.6.1"

log() { echo "[run_slurm_tests] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it starts SLURM daemons): sudo $0"
cd "$REPO"
[[ -f requirements.lock && -f pyproject.toml ]] || die "$REPO is not the evomal repository root"

t0=$SECONDS

# ---------------------------------------------------------------- 1. venv
# What the venv was built from; a change re-runs the (then mostly no-op) installs.
want_stamp="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1) $PLUGIN $JOBSTEP"
stamp_file="$VENV/.evomal-slurm-stamp"
if [[ ! -x $VENV/bin/python || $(cat "$stamp_file" 2>/dev/null) != "$want_stamp" ]]; then
    log "setting up $VENV"
    [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
    rm -f "$stamp_file"
    pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
    "${pip[@]}" install -r requirements.lock
    "${pip[@]}" install --no-deps -e .
    "${pip[@]}" install "$PLUGIN" "$JOBSTEP"
    echo "$want_stamp" >"$stamp_file"
    log "venv ready after $((SECONDS - t0)) s"
fi
"$VENV/bin/python" -c 'import snakemake_executor_plugin_slurm, evomal' \
    || die "$VENV lacks the SLURM plugin or evomal; delete it and run again"

# ---------------------------------------------------------------- 2. cluster
stop_cluster() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ ${EVOMAL_SLURM_KEEP:-0} == 1 ]]; then
        log "EVOMAL_SLURM_KEEP=1: leaving the cluster running (stop: $HERE/stop_cluster.sh)"
    else
        "$HERE/stop_cluster.sh" || log "WARNING: stop_cluster.sh failed"
    fi
    log "done in $((SECONDS - t0)) s, exit status $rc"
    exit "$rc"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$HERE/start_cluster.sh"

# ---------------------------------------------------------------- 3. tests
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export SLURM_CONF=/etc/slurm/slurm.conf
unset PYTHONHOME
log "running the SLURM tests"
set +e
"$VENV/bin/python" -m pytest -m slurm tests/test_slurm.py -p no:cacheprovider -rs "$@"
status=$?
set -e
exit "$status"
