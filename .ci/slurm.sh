#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian slurm-wlm 22.05 + munge), for the workflow's cluster test.
#   .ci/slurm.sh start DIR   write /etc/slurm/{slurm,gres}.conf, start munged, slurmctld, slurmd (state and logs in
#                            DIR); wait until the node is idle
#   .ci/slurm.sh stop DIR    stop the three daemons by the PIDs recorded in DIR, remove the config files it wrote
# The config goes to the default place because snakemake's job-step plugin drops SLURM_* variables (SLURM_CONF too)
# before its inner srun; an existing /etc/slurm/slurm.conf not written by this script is never touched.
# Facts behind the config: shared/NOTES.md ("A real SLURM cluster on one machine"): no cgroups, a fake GPU (gres on
# /dev/null), DefMemPerCPU so that jobs share the node.
set -euo pipefail
conf=/etc/slurm/slurm.conf
marker="# written by diractrap .ci/slurm.sh"
cmd=${1:?usage: slurm.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: slurm.sh start|stop DIR}" && cd "$2" && pwd)

stop() {
    for name in slurmd slurmctld munged; do
        [ -f "$dir/$name.pid" ] || continue
        pid=$(cat "$dir/$name.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/$name.pid"
    done
    if [ -f "$dir/munge.dir" ]; then rm -rf "$(cat "$dir/munge.dir")" "$dir/munge.dir"; fi
    for f in "$conf" "$(dirname "$conf")/gres.conf"; do
        if [ -f "$f" ] && head -n 1 "$f" | grep -qF "$marker"; then rm -f "$f"; fi
    done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: slurm.sh start|stop DIR" >&2; exit 2; }
for exe in munged slurmctld slurmd sbatch squeue sinfo; do
    command -v "$exe" >/dev/null || { echo "slurm.sh: $exe not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 3; }
done

if [ -f "$conf" ] && ! head -n 1 "$conf" | grep -qF "$marker"; then
    echo "slurm.sh: $conf exists and was not written by this script: not replacing it" >&2
    exit 4
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$(dirname "$conf")"
# munged runs as the munge user, which may not traverse DIR (pytest's temporary directories are private)
mdir=$(mktemp -d /tmp/diractrap-munge.XXXXXX)
echo "$mdir" > "$dir/munge.dir"
chmod 755 "$mdir"
chown munge:munge "$mdir"
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
cat > "$conf" <<EOF
$marker (state in $dir)
ClusterName=diractrap
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$mdir/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.pidfile
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$(dirname "$conf")/gres.conf" <<EOF
$marker
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
EOF
export SLURM_CONF="$conf"

# munge: its own socket, pid and log files, run as the munge user (it refuses to run as root)
runuser -u munge -- munged --socket="$mdir/munge.socket" --pid-file="$mdir/munged.pid" \
    --log-file="$mdir/munged.log" --seed-file="$mdir/munge.seed"
cp "$mdir/munged.pid" "$dir/munged.pid"

slurmctld -D -i -f "$SLURM_CONF" >"$dir/log/slurmctld.out" 2>&1 & echo $! > "$dir/slurmctld.pid"
slurmd -D -N localhost -f "$SLURM_CONF" >"$dir/log/slurmd.out" 2>&1 & echo $! > "$dir/slurmd.pid"
for _ in $(seq 60); do
    if sinfo -h -N -o %T 2>/dev/null | grep -qx idle; then echo "slurm up ($conf, logs in $dir/log)"; exit 0; fi
    sleep 0.5
done
echo "slurm.sh: the node did not become idle; logs in $dir/log" >&2
sinfo -N -l >&2 || true
stop
exit 1
