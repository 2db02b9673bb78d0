#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by workflow/slurm/start_cluster.sh.
#
# Only the daemons that start_cluster.sh started are stopped, found by the PID
# files in the state dir (EVOMAL_SLURM_DIR, default /tmp/evomal-slurm); a PID
# is only signalled while it still belongs to the expected program.  Jobs still
# known to this cluster are cancelled first.  Safe to call twice, or when
# nothing runs.  Leaves the state dir (logs, config) and the packages in place.
#
# Environment:
#   EVOMAL_SLURM_DIR       state dir (default /tmp/evomal-slurm)
#   EVOMAL_SLURM_PURGE=1   also delete the state dir after stopping
set -uo pipefail

STATE_DIR="${EVOMAL_SLURM_DIR:-/tmp/evomal-slurm}"
RUN="$STATE_DIR/run"

log() { echo "[stop_cluster] $*" >&2; }

if [[ ! -d $RUN ]]; then
    log "nothing to stop ($RUN does not exist)"
    exit 0
fi

# proc_is PID NAME...: true if PID is a live (not zombie) process whose
# command name is one of NAME... (guards against a recycled PID)
proc_is() {
    local pid=$1 comm n
    shift
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    # an exited daemon whose parent does not reap it is a zombie: not alive
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && return 1
    for n in "$@"; do [[ $comm == "$n" ]] && return 0; done
    return 1
}

# pid_of PIDFILE NAME...: print the PID in PIDFILE if proc_is PID NAME...
pid_of() {
    local pidfile=$1 pid
    shift
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] && proc_is "$pid" "$@" && echo "$pid"
}

# stop_daemon LABEL PIDFILE NAME...
stop_daemon() {
    local label=$1 pidfile=$2 pid i
    shift 2
    if ! pid=$(pid_of "$pidfile" "$@"); then
        [[ -e $pidfile ]] && log "$label not running (stale $pidfile)"
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $label (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do # up to 20 s
        proc_is "$pid" "$@" || break
        sleep 0.1
    done
    if proc_is "$pid" "$@"; then
        log "$label (pid $pid) ignored SIGTERM for 20 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do proc_is "$pid" "$@" || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

# Cancel the jobs of this cluster while the controller still answers, so no
# job steps outlive slurmd.
if pid_of "$RUN/slurmctld.pid" slurmctld slurmctld-wlm >/dev/null \
    && [[ -r $STATE_DIR/slurm.conf ]]; then
    export SLURM_CONF=$STATE_DIR/slurm.conf
    jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o '%i' 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for ((i = 0; i < 40; i++)); do # up to 20 s
            [[ -z $(timeout 5 squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o '%i' 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

stop_daemon slurmd "$RUN/slurmd.pid" slurmd slurmd-wlm
stop_daemon slurmctld "$RUN/slurmctld.pid" slurmctld slurmctld-wlm
stop_daemon munged "$RUN/munge/munged.pid" munged

if [[ ${EVOMAL_SLURM_PURGE:-0} == 1 ]]; then
    log "removing $STATE_DIR"
    rm -rf -- "$STATE_DIR"
fi
log "stopped"
