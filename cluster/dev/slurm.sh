#!/usr/bin/env bash
# A throw-away SLURM on this one machine, for development and for the tests marked `slurm`.
#
#   cluster/dev/slurm.sh up   [--nodes N] [--accounting] [--prefix DIR]   # prints `export SLURM_CONF=...`
#   cluster/dev/slurm.sh down [--prefix DIR]
#   cluster/dev/slurm.sh status [--prefix DIR]
#
# Needs root and Debian's packages (installed here when missing): slurm-wlm and munge, plus slurmdbd and
# mariadb-server with --accounting. N nodes (node1..nodeN) run as N slurmd on this host (Debian's slurmd is built
# with MULTIPLE_SLURMD), each with this host's CPUs and one count-only GPU GRES, so that the scripts in slurm/ that
# ask for --gpus-per-node=1 are schedulable here; no CUDA device is behind it, and trials that ask Ray for a GPU fail.
# Accounting (sacct) is what lets submitit notice a job that died without writing its result; tests of killed or
# requeued jobs need it. Every daemon we start is stopped by its pid file on `down`; nothing else is touched.
set -euo pipefail

cmd=${1:-}; shift || true
NODES=2; ACCT=0; PREFIX=${CLS_SLURM_PREFIX:-/tmp/cls-slurm}
while [ $# -gt 0 ]; do
    case $1 in
        --nodes) NODES=$2; shift 2 ;;
        --accounting) ACCT=1; shift ;;
        --prefix) PREFIX=$2; shift 2 ;;
        *) echo "slurm.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
CONF=$PREFIX/etc/slurm.conf
say() { echo "[dev-slurm +${SECONDS}s] $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.25 s
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    echo "slurm.sh: $what did not happen within ${limit}s; logs are in $PREFIX/log and $PREFIX/mysql-run" >&2
    return 1
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local pkgs="slurm-wlm munge" missing=""
    [ "$ACCT" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
    for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || { echo "slurm.sh: needs$missing; run as root or: sudo apt-get install$missing" >&2; exit 1; }
    say "apt-get install$missing"
    { apt-get install -y -q --no-install-recommends $missing || { apt-get update -q && apt-get install -y -q --no-install-recommends $missing; }; } \
        >"$PREFIX/log/apt.log" 2>&1 || { echo "slurm.sh: apt-get failed; see $PREFIX/log/apt.log" >&2; exit 1; }
}

write_conf() {
    local host cpus nodelines="" acct
    host=$(hostname -s); cpus=$(nproc)
    for i in $(seq 1 "$NODES"); do
        nodelines+="NodeName=node$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus RealMemory=8000 Gres=gpu:1 State=UNKNOWN"$'\n'
    done
    if [ "$ACCT" = 1 ]; then
        acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nJobAcctGatherType=jobacct_gather/linux'
    else
        acct=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
    fi
    cat >"$CONF" <<CONF
ClusterName=clsdev
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$PREFIX/state/ctld
SlurmdSpoolDir=$PREFIX/state/slurmd-%n
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd-%n.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd-%n.log
# cgroups are not writable on every CI runner: track processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
$acct
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
# SLURM's default: a cancelled job's batch step has 30 s after SIGTERM to save and clean up before SIGKILL.
KillWait=30
# Above 4, 'sbatch --wait' notices a finished job only after 10, 42, 74... s.
MinJobAge=4
$nodelines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    # slurmd drops a GPU without a device file; /dev/null stands in (task/none constrains no devices).
    printf 'AutoDetect=off\nName=gpu File=/dev/null\n' >"$PREFIX/etc/gres.conf"
}

start_munge() {
    # One munged per machine: a running one (someone else's) is shared, and left running on `down`.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 "munged answering" sh -c 'munge -n | unmunge'
    cp /run/munge/munged.pid "$PREFIX/run/munged.pid"     # ours: stopped on `down`
}

start_accounting() {
    mkdir -p /run/mysqld "$PREFIX/mysql-run" && chown mysql:mysql /run/mysqld "$PREFIX/mysql-run"  # mariadbd runs as mysql
    [ -d "$PREFIX/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$PREFIX/mysql" --skip-test-db \
        >"$PREFIX/log/mariadb-install.log" 2>&1 || { echo "slurm.sh: mariadb-install-db failed; see $PREFIX/log/mariadb-install.log" >&2; exit 1; }
    /usr/sbin/mariadbd --user=mysql --datadir="$PREFIX/mysql" --socket=/run/mysqld/mysqld.sock \
        --skip-networking --pid-file="$PREFIX/mysql-run/mariadbd.pid" --log-error="$PREFIX/mysql-run/mariadbd.log" \
        </dev/null >/dev/null 2>&1 &
    wait_for 30 "mariadb answering" mariadb -uroot -e 'select 1'
    mariadb -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'clsdev';
                       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    cat >"$PREFIX/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$PREFIX/log/slurmdbd.log
PidFile=$PREFIX/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=clsdev
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$PREFIX/etc/slurmdbd.conf"   # slurmdbd reads it beside $SLURM_CONF and refuses a readable one
    /usr/sbin/slurmdbd
    wait_for 30 "slurmdbd listening on 6819" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
}

up() {
    if alive "$PREFIX/run/slurmctld.pid"; then
        echo "slurm.sh: a dev SLURM is already up in $PREFIX; run '$0 down --prefix $PREFIX' first" >&2; exit 1
    fi
    if (exec 3<>/dev/tcp/127.0.0.1/6817) 2>/dev/null; then
        echo "slurm.sh: a SLURM controller already listens on port 6817 of this machine; stop it first" >&2; exit 1
    fi
    mkdir -p "$PREFIX"/{etc,state/ctld,run,log}
    chmod 755 "$PREFIX"  # mariadbd runs as mysql and must reach its datadir inside
    install_packages
    write_conf
    export SLURM_CONF=$CONF
    start_munge
    [ "$ACCT" = 1 ] && start_accounting
    /usr/sbin/slurmctld
    for i in $(seq 1 "$NODES"); do /usr/sbin/slurmd -N "node$i"; done
    wait_for 5 "slurmctld answering" timeout 2 scontrol ping
    wait_for 60 "all $NODES nodes idle" bash -c '[ "$(timeout 2 sinfo -h -N -o %T | sort -u)" = idle ]'
    echo "export SLURM_CONF=$CONF" >"$PREFIX/env"
    say "$NODES nodes up (accounting: $([ "$ACCT" = 1 ] && echo on || echo off)); use: source $PREFIX/env"
    echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {  # SIGTERM, wait up to 10 s, then SIGKILL
    local f=$1 pid
    alive "$f" || { rm -f "$f"; return 0; }
    pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

down() {
    [ -d "$PREFIX/run" ] || { echo "slurm.sh: nothing is up in $PREFIX" >&2; return 0; }
    export SLURM_CONF=$CONF
    # Jobs first, so that their processes go through SLURM's own kill path.
    if alive "$PREFIX/run/slurmctld.pid"; then scancel --full --quiet --user "$(id -un)" 2>/dev/null || true; fi
    for f in "$PREFIX"/run/slurmd-*.pid; do if [ -e "$f" ]; then stop_pidfile "$f"; fi; done
    for f in run/slurmctld run/slurmdbd mysql-run/mariadbd run/munged; do stop_pidfile "$PREFIX/$f.pid"; done
    rm -f "$PREFIX/env"
    say "down"
}

status() {
    export SLURM_CONF=$CONF
    alive "$PREFIX/run/slurmctld.pid" || { echo "down"; return 1; }
    sinfo -N
}

case $cmd in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status [--nodes N] [--accounting] [--prefix DIR]" >&2; exit 2 ;;
esac
