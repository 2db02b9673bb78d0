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
#   1. starts the single-node cluster (workflow/slurm/start_cluster.sh), in the
#      background while step 2 runs; an EXIT trap stops it again
#      (workflow/slurm/stop_cluster.sh), whatever happens afterwards;
#   2. creates the virtualenv .venv-slurm in the repository root if it is
#      missing (or if requirements.lock / pyproject.toml changed since it was
#      made): the project's exact dependencies from requirements.lock, evomal
#      itself (editable, --no-deps) and snakemake-executor-plugin-slurm 2.8.0.
#      It is kept apart from .venv on purpose: with the plugin installed, every
#      `snakemake` start queries the SLURM controller and waits ~9 s where none
#      answers, which would slow down the ordinary test suite;
#   3. runs `python -m pytest -m slurm tests/test_slurm.py` with that venv's
#      python and its bin/ first on PATH (SLURM jobs inherit the environment,
#      sbatch --export=ALL), with EVOMAL_SLURM_REQUIRED=1 so that a missing
#      plugin or cluster fails the tests instead of skipping them.
#
# Environment:
#   PYTHON               interpreter for creating the venv (default: python3)
#   EVOMAL_SLURM_VENV    venv path (default: <repo>/.venv-slurm)
#   EVOMAL_SLURM_KEEP=1  leave the cluster running afterwards (for debugging)
#   EVOMAL_SLURM_TEST_DIR  pytest's --basetemp, the tests' work dirs
#                        (default /tmp/evomal-slurm-tests; emptied at the start)
#   plus those of start_cluster.sh / stop_cluster.sh (EVOMAL_SLURM_DIR, ...)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"
VENV="${EVOMAL_SLURM_VENV:-$REPO/.venv-slurm}"
PYTHON="${PYTHON:-python3}"
PLUGIN="snakemake-executor-plugin-slurm==2.8.0"
JOBSTEP="snakemake-executor-plugin-slurm-jobstep==0.6.1"
TEST_DIR="${EVOMAL_SLURM_TEST_DIR:-/tmp/evomal-slurm-tests}"

log() { echo "[run_slurm_tests] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it starts SLURM daemons): sudo $0"
cd "$REPO"
[[ -f requirements.lock && -f pyproject.toml ]] || die "$REPO is not the evomal repository root"

t0=$SECONDS

# ---------------------------------------------------------------- 1. cluster
stop_cluster() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n ${cluster_pid:-} ]] && wait "$cluster_pid" 2>/dev/null # let a start finish, then stop
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

# Started in the background while pip works (apt-get on a bare machine).  It must be up before
# anything imports the SLURM plugin: the plugin runs `scontrol show config` on import, which
# waits ~9 s when SLURM is installed but no controller answers.
"$HERE/start_cluster.sh" &
cluster_pid=$!
cluster_up() {
    if [[ -n ${cluster_pid:-} ]]; then
        wait "$cluster_pid" || die "start_cluster.sh failed"
        cluster_pid=
    fi
}

# ---------------------------------------------------------------- 2. venv
# What the venv was built from; a change re-runs the (then mostly no-op) installs.
want_stamp="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1) $PLUGIN $JOBSTEP"
stamp_file="$VENV/.evomal-slurm-stamp"
if [[ ! -x $VENV/bin/python || $(cat "$stamp_file" 2>/dev/null) != "$want_stamp" ]]; then
    log "setting up $VENV (pip output: $VENV/pip.log)"
    [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
    rm -f "$stamp_file"
    pip_log="$VENV/pip.log"
    # --no-compile: byte-compiling all ~1.8 GB of packages costs ~40 s; only what the tests
    # import is compiled, below and on first use (PYTHONDONTWRITEBYTECODE is unset for the tests)
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input install --no-compile)
    {
        "${pip[@]}" -r requirements.lock &&
            "${pip[@]}" --no-deps -e . &&
            "${pip[@]}" "$PLUGIN" "$JOBSTEP"
    } >"$pip_log" 2>&1 || { tail -n 40 "$pip_log" >&2; die "pip install failed (log: $pip_log)"; }
    log "packages installed after $((SECONDS - t0)) s; byte-compiling what the tests import"
    cluster_up
    # every evomal module (with what they import: torch, sympy, mlflow, ...), what a job's
    # Snakemake runs, and all of the small Snakemake packages
    env -u PYTHONDONTWRITEBYTECODE "$VENV/bin/python" -c '
import importlib, pkgutil, evomal
for m in pkgutil.walk_packages(evomal.__path__, "evomal."):
    importlib.import_module(m.name)
import pytest, matplotlib.pyplot, sklearn.datasets, mlflow.tracking, mlflow.store.tracking.sqlalchemy_store
import snakemake.cli, snakemake.api, snakemake.workflow, snakemake.dag, snakemake.jobs, snakemake.script
import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep
' >>"$pip_log" 2>&1 || log "WARNING: warm-up import failed (see $pip_log)"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$VENV/bin/python" -m compileall -q -j 0 "$site"/snakemake "$site"/snakemake_* "$site"/yte \
        "$site"/pulp >>"$pip_log" 2>&1 || true
    echo "$want_stamp" >"$stamp_file"
    log "venv ready after $((SECONDS - t0)) s"
fi
cluster_up
"$VENV/bin/python" -c 'import snakemake_executor_plugin_slurm, evomal' \
    || die "$VENV lacks the SLURM plugin or evomal; delete it and run again"

# ---------------------------------------------------------------- 3. tests
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export SLURM_CONF=/etc/slurm/slurm.conf
# the tests fail, instead of being skipped, when the plugin or the cluster is missing
export EVOMAL_SLURM_REQUIRED=1
# let first imports write their .pyc into the venv (pip ran with --no-compile); jobs inherit this
unset PYTHONHOME PYTHONDONTWRITEBYTECODE
log "running the SLURM tests"
set +e
# a fixed --basetemp: the run's work dirs (SLURM logs included) stay there for inspection, and
# pytest runs elsewhere on the machine cannot rotate them away (pytest empties it at the start)
"$VENV/bin/python" -m pytest -m slurm tests/test_slurm.py -p no:cacheprovider -rs \
    --basetemp "$TEST_DIR" "$@"
status=$?
set -e
exit "$status"
