#!/bin/bash
# Real SLURM on this single machine (Debian's slurm-wlm + munge; no cgroups, for containers), then a tiny
# rs_moded.sh sweep through it (Snakemake's slurm executor): the chained default recipe, a failure, the table.
#
#   scripts/slurm_local.sh                 install (once), configure, start the daemons, run the tiny sweep
#                                          (the default recipe; one task's data broken: its jobs fail, the rest run)
#   scripts/slurm_local.sh --setup-only    just make SLURM ready (sinfo shows the node idle)
#   scripts/slurm_local.sh --fresh         delete the tiny sweep's outputs first (else finished jobs are skipped)
#   scripts/slurm_local.sh --stop          stop slurmd, slurmctld and munged (those started from here)
#   scripts/slurm_local.sh --status        daemons and sinfo
#   scripts/slurm_local.sh -- ARGS...      extra rs_moded.sh arguments for the sweep (override the tiny ones)
# Environment: SWEEP_OUT (default runs/slurm_local), SWEEP_MODEL (default minilm), SLURM_CONF_PATH
# (default /etc/slurm/slurm.conf). Needs root. Rerunning is safe: installed packages, the munge key, a
# running daemon and an unchanged config are all kept (a changed config restarts the daemons).
# Exit status: 0 when copa's chain completed and only wsc's (broken) jobs failed; non-zero otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF=${SLURM_CONF_PATH:-/etc/slurm/slurm.conf}
TEMPLATE=$ROOT/scripts/slurm.conf.in
LOG_DIR=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
NODE=localhost
SWEEP_OUT=${SWEEP_OUT:-runs/slurm_local}
SWEEP_MODEL=${SWEEP_MODEL:-minilm}
export SLURM_CONF=$CONF

say() { echo "[slurm_local $(date +%H:%M:%S)] $*"; }
die() { echo "slurm_local.sh: error: $*" >&2; exit 1; }

ACTION=run FRESH=0 EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
        --stop) ACTION=stop ;;
        --status) ACTION=status ;;
        --setup-only) ACTION=setup ;;
        --fresh) FRESH=1 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "needs root (apt-get, daemons, /etc/slurm)"

alive() {  # alive PIDFILE NAME: the process in PIDFILE runs and is NAME
    local pid
    [ -f "$1" ] && pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ -d "/proc/$pid" ] &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop_one() {  # stop_one PIDFILE NAME
    local pid i
    if alive "$1" "$2"; then
        pid=$(cat "$1")
        say "stopping $2 (pid $pid)"
        kill "$pid"
        for i in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
        if [ -d "/proc/$pid" ]; then say "$2 (pid $pid) still running; sending KILL"; kill -9 "$pid" || true; fi
    fi
    rm -f "$1"
}
stop_all() {
    stop_one "$SLURMD_PID" slurmd
    stop_one "$CTLD_PID" slurmctld
    stop_one "$MUNGE_PID" munged
}
status() {
    local pidfile name
    while read -r pidfile name; do
        if alive "$pidfile" "$name"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: not running"; fi
    done <<< "$MUNGE_PID munged
$CTLD_PID slurmctld
$SLURMD_PID slurmd"
    if command -v sinfo >/dev/null; then sinfo 2>&1 || true; fi
}

case $ACTION in
    stop) stop_all; exit 0 ;;
    status) status; exit 0 ;;
esac

T0=$(date +%s)
# ------------------------------------------------------------------ install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
   ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    say "installed: $(slurmctld -V)"
else
    say "already installed: $(slurmctld -V)"
fi

# ------------------------------------------------------------------ munge
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if alive "$MUNGE_PID" munged; then
    say "munged already running (pid $(cat "$MUNGE_PID"))"
else
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
fi
for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

# ------------------------------------------------------------------ slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
AVAIL_MB=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
MEM_MB=$(( AVAIL_MB * 9 / 10 ))
mkdir -p "$(dirname "$CONF")" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
NEW=$(sed -e "s|@CLUSTER@|localcluster|" -e "s|@HOST@|$HOST(127.0.0.1)|" -e "s|@LOG_DIR@|$LOG_DIR|g" \
          -e "s|@NODE@|$NODE|" -e "s|@NODE_HOSTNAME@|$HOST|" -e "s|@CPUS@|$CPUS|" -e "s|@MEM_MB@|$MEM_MB|" "$TEMPLATE")
CHANGED=0
if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -q "scripts/slurm_local.sh"; then
    die "$CONF exists and was not written by this script; move it away (or set SLURM_CONF_PATH)"
fi
# RealMemory follows the free memory, which drifts: keep the old file unless something else changed
OLD_CMP=
if [ -f "$CONF" ]; then OLD_CMP=$(sed 's/RealMemory=[0-9]*/RealMemory=X/' "$CONF"); fi
if [ "$OLD_CMP" != "$(printf '%s\n' "$NEW" | sed 's/RealMemory=[0-9]*/RealMemory=X/')" ]; then
    printf '%s\n' "$NEW" > "$CONF"
    CHANGED=1
    say "wrote $CONF (node $NODE: $CPUS CPUs, RealMemory ${MEM_MB} MB)"
else
    say "$CONF unchanged"
fi
if [ $CHANGED = 1 ] && { alive "$CTLD_PID" slurmctld || alive "$SLURMD_PID" slurmd; }; then
    say "config changed: restarting the SLURM daemons"
    stop_one "$SLURMD_PID" slurmd
    stop_one "$CTLD_PID" slurmctld
fi

# ------------------------------------------------------------------ daemons
if alive "$CTLD_PID" slurmctld; then
    say "slurmctld already running (pid $(cat "$CTLD_PID"))"
else
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || { tail -20 "$LOG_DIR/slurmctld.log" >&2; die "slurmctld is not answering"; }
if alive "$SLURMD_PID" slurmd; then
    say "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
    say "starting slurmd -N $NODE"
    slurmd -N "$NODE" || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi
STATE=
for i in $(seq 1 60); do
    STATE=$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1)
    case $STATE in
        idle|mix|alloc|comp) break ;;
        down*|drain*|drng*|inval*|fail*)
            if [ "$i" -gt 2 ]; then scontrol update nodename="$NODE" state=resume 2>/dev/null || true; fi ;;
    esac
    sleep 1
done
case $STATE in
    idle|mix|alloc|comp) ;;
    *) sinfo -R >&2 || true; tail -20 "$LOG_DIR/slurmd.log" >&2 || true; die "node $NODE is '$STATE', not idle" ;;
esac
say "SLURM ready in $(( $(date +%s) - T0 ))s:"
sinfo
[ $ACTION = run ] || exit 0

# ------------------------------------------------------------------ the tiny sweep
# The default recipe through rs_moded.sh (Snakemake's slurm executor): per (task, seed) baseline -> capture ->
# modules -> distilled fine-tune, then the table. wsc's training file is broken on purpose: its baseline job
# fails, and only what depends on it (wsc's capture, modules, fine-tune) is never submitted; copa completes.
cd "$ROOT"
if [ $FRESH = 1 ]; then say "--fresh: removing $SWEEP_OUT"; rm -rf "$SWEEP_OUT"; fi
DATA=$SWEEP_OUT/data
mkdir -p "$DATA/wsc"
rm -rf "$DATA/copa" && cp -r "$ROOT/data/copa" "$DATA/copa"
cp "$ROOT/data/wsc/val.jsonl" "$DATA/wsc/val.jsonl"
echo "this line is not JSON: the failing job" > "$DATA/wsc/train.jsonl"
ARGS=(--tasks "copa wsc" --seeds 1 --model "$SWEEP_MODEL" --data_dir "$DATA" --out_dir "$SWEEP_OUT"
      --capture_samples 128 --fit_tokens 4096 --ft_epochs 1 --max_train_samples 32 --max_eval_samples 32
      --sbatch_args "--cpus-per-task=1 --time=60" --wait)
T1=$(date +%s)
say "submitting: rs_moded.sh ${ARGS[*]} ${EXTRA[*]:-}"
rc=0
SWEEP_LOG=$SWEEP_OUT/logs/slurm_local_sweep.log
mkdir -p "$(dirname "$SWEEP_LOG")"
bash "$ROOT/rs_moded.sh" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 | tee "$SWEEP_LOG" || rc=$?
say "sweep took $(( $(date +%s) - T1 ))s (all: $(( $(date +%s) - T0 ))s), rs_moded.sh exit $rc (1 expected: wsc fails)"
fail=0
check() { if eval "$2"; then say "ok: $1"; else say "FAILED: $1"; fail=1; fi; }
n_copa=$(find "$SWEEP_OUT/copa" -name results.json 2>/dev/null | wc -l)
check "copa: the baseline + the distilled fine-tune ($n_copa results)" '[ "$n_copa" = 2 ]'
check "copa: the chain ran on SLURM (baseline, capture, modules, finetune jobs)" \
    'for r in baseline capture modules finetune; do grep -q "Rule: $r)" "$SWEEP_LOG" || exit 1; done'
check "wsc: its baseline job failed on SLURM" 'grep -q "Error in rule baseline" "$SWEEP_LOG"'
check "wsc: nothing that depends on them ran (no capture, modules or results)" \
    '[ ! -e "$SWEEP_OUT/wsc/capture" ] && [ -z "$(find "$SWEEP_OUT/wsc" -name results.json 2>/dev/null)" ]'
check "rs_moded.sh reported the failure (exit $rc)" '[ "$rc" != 0 ]'
check "the table has the default recipe's rows" 'grep -q "modular-data-alloc-ft+kd" "$SWEEP_OUT/table.txt"'
if [ $fail = 1 ]; then say "FAILED; logs in $SWEEP_OUT/logs"; exit 1; fi
say "OK: the default recipe's chain on real SLURM, and a failed job cancelled only what depends on it"
