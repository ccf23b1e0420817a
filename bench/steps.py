"""bench/steps.py -- for bench/background.sh --steps: which of a background
job's steps the workload's slow transactions started in.

    python3 steps.py SERVER_LOG WORK_DIR

SERVER_LOG was written with log_line_prefix '%n [%p] ' and log_min_messages
debug2: the worker's "step begins in phase" and "step committed" lines.
WORK_DIR is bench/background.sh's: pgbench's per-transaction logs of the
loaded windows (loaded<R>.*) and the unloaded latencies (alone<R>.lat).

A transaction is slow when it took longer than the pooled p99 of the
unloaded windows.  Each transaction that started during a job is counted in
the step that was running when it started: the job's first pass (until one
commits), its later passes, its batches, its index build (add_unique), its
other steps (preparing, finishing), or between steps (a batch's pause, the
naps before it).  A step that failed lasts until the next one begins (a
job's last, until its last line).  Prints one line per kind of step; a
share of slow transactions well above 1% is where the job costs the p99.
A job resumed after a crash is not told apart: its first pass then counts
as the first.
"""
import bisect
import collections
import glob
import re
import sys

STEP = re.compile(r'^(\d+\.\d+) \[(\d+)\] DEBUG:  dedup_ext job (\d+): '
                  r'step (begins in phase "([^"]*)"|committed)$')
KINDS = ('first pass', 'later passes', 'batches', 'index build', 'other steps', 'between steps')


def steps(log):
    """per job: [(start, end, kind)], in order"""
    events = collections.defaultdict(list)
    for line in open(log, errors='replace'):
        m = STEP.match(line.rstrip('\n'))
        if m:
            events[int(m.group(3))].append((float(m.group(1)), m.group(5)))
    jobs = {}
    for job, ev in events.items():
        out = []
        passed = False
        for i, (t, phase) in enumerate(ev):
            if phase is None:
                continue
            # its commit, or else the next attempt's start, or the job's last line
            nxt = ev[i + 1] if i + 1 < len(ev) else (ev[-1][0], '')
            if phase == 'scanning':
                kind = 'later passes' if passed else 'first pass'
                passed = passed or nxt[1] is None
            elif phase in ('deleting', 'renaming', 'merging'):
                kind = 'batches'
            elif phase == 'building unique index':
                kind = 'index build'
            else:
                kind = 'other steps'
            out.append((t, nxt[0], kind))
        if out:
            jobs[job] = out
    return jobs


def transactions(work):
    """(start, latency ms) of the loaded windows; pgbench -l: latency in
    column 3 (us), end in columns 5-6; a line cut short is skipped"""
    out = []
    for f in glob.glob(work + '/loaded*.[0-9]*'):
        for line in open(f):
            a = line.split()
            if len(a) == 7:
                lat = int(a[2]) / 1e3
                out.append((int(a[4]) + int(a[5]) / 1e6 - lat / 1e3, lat))
    out.sort()
    return out


def main():
    log, work = sys.argv[1:3]
    alone = sorted(float(x) for f in glob.glob(work + '/alone*.lat') for x in open(f))
    if not alone:
        sys.exit('no unloaded latencies in ' + work)
    p99 = alone[int(len(alone) * 0.99)]
    jobs = steps(log)
    if not jobs:
        sys.exit('no step lines in %s: was it written at log_min_messages debug2?' % log)
    tx = transactions(work)
    lat = collections.defaultdict(list)
    secs = collections.Counter()
    for spans in jobs.values():
        starts = [s for s, _, _ in spans]
        for s, e, kind in spans:
            secs[kind] += e - s
        secs['between steps'] += spans[-1][1] - spans[0][0] - sum(e - s for s, e, _ in spans)
        lo = bisect.bisect_left(tx, (spans[0][0],))
        hi = bisect.bisect_left(tx, (spans[-1][1],))
        for t, ms in tx[lo:hi]:
            i = bisect.bisect_right(starts, t) - 1
            lat[spans[i][2] if t < spans[i][1] else 'between steps'].append(ms)
    print('%d jobs; slow: longer than the unloaded p99, %.2f ms (%d transactions)'
          % (len(jobs), p99, len(alone)))
    print()
    print('| step | seconds | transactions | slow | share slow | p50 ms | p99 ms | max ms |')
    print('|---|---|---|---|---|---|---|---|')
    for kind in KINDS:
        v = sorted(lat[kind])
        if not v:
            continue
        slow = sum(1 for x in v if x > p99)
        print('| %s | %.1f | %d | %d | %.1f%% | %.2f | %.2f | %.2f |'
              % (kind, secs[kind], len(v), slow, 100.0 * slow / len(v),
                 v[len(v) // 2], v[int(len(v) * 0.99)], v[-1]))


main()
