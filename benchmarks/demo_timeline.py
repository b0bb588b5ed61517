"""When each job of a snakemake run started and ended, from the run's own log: per-rule job-seconds, the wall
time, and how busy the cores were.

    snakemake --cores all > run.log 2>&1;  python benchmarks/demo_timeline.py run.log --cores 2

On a machine whose cores are busy all along (job-seconds / (wall x cores) near 1) a run is throughput-bound:
splitting a job into smaller ones cannot shorten it, only less work can. Job-seconds count a job's wall time
whatever its thread count.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime


def timeline(lines) -> list[tuple[str, float, float]]:
    """(rule, start s, end s) per finished job, times from the log's first timestamp."""
    stamp, rule, started, jobs = None, None, {}, []
    for line in lines:
        if m := re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line.strip()):
            stamp = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m[1]
        elif (m := re.match(r"^\s+jobid: (\d+)", line)) and stamp is not None:
            started[m[1]] = (stamp, rule)
        elif m := re.match(r"^Finished job(?:id:)? (\d+)", line):
            begin, name = started[m[1]]
            jobs.append((name, begin, stamp))
    t0 = min(b for _, b, _ in jobs)
    return [(n, (b - t0).total_seconds(), (e - t0).total_seconds()) for n, b, e in jobs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", help="the output of a snakemake run (stdout and stderr)")
    ap.add_argument("--cores", type=int, required=True, help="the cores the run was given")
    args = ap.parse_args(argv)
    with open(args.log) as f:
        jobs = timeline(f)
    per_rule = defaultdict(lambda: [0, 0.0])
    for name, b, e in jobs:
        per_rule[name][0] += 1
        per_rule[name][1] += e - b
    wall = max(e for _, _, e in jobs)
    busy = sum(e - b for _, b, e in jobs)
    for name, (n, s) in sorted(per_rule.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:24s} {n:3d} jobs {s:7.0f} job-s")
    print(f"{len(jobs)} jobs, {busy:.0f} job-s in {wall:.0f} s wall on {args.cores} cores: "
          f"cores busy {busy / (wall * args.cores):.0%}")
    last = sorted(jobs, key=lambda j: j[2])[-3:]
    print("last to finish: " + ", ".join(f"{n} ({b:.0f}-{e:.0f} s)" for n, b, e in last))


if __name__ == "__main__":
    main()
