"""bench/runqueue.py -- for bench/runqueue.sh: how much of the slow
transactions' time the application's processes spent waiting for a CPU.

    python3 runqueue.py DIR...

Each DIR holds one job's run: pgbench's per-transaction logs (pb.*),
sched_sample's output (samples), and window (two epochs: the job's
submission and its end).  A transaction is slow when it took longer than the
p99 of the transactions that started in the 4 seconds before the job
(unloaded).  Its wait is the largest, over the sampled processes, of one
process's run-queue wait summed from the last sample before it started to
the first sample after it ended (up to a millisecond more on each side);
pgbench's log does not say which backend served which client, so the wait
may be another client's.  The same measure over the unloaded window's own
transactions slower than its p99 is the control: how often a slow
transaction has such a wait without the job.  Prints one line a job and one
for all.
"""
import bisect
import collections
import glob
import sys


def transactions(d):
    """(start, end, latency) in seconds; pgbench -l: latency in column 3 (us),
    end in columns 5-6; a line cut short by SIGTERM is skipped"""
    out = []
    for f in glob.glob(d + '/pb.*'):
        for line in open(f):
            a = line.split()
            if len(a) != 7:
                continue
            lat = int(a[2]) / 1e6
            end = int(a[4]) + int(a[5]) / 1e6
            out.append((end - lat, end, lat))
    return out


def waits(d):
    """per task: sample times and cumulative run-queue wait (s)"""
    t = collections.defaultdict(list)
    w = collections.defaultdict(list)
    for line in open(d + '/samples'):
        ts, i, _, delay = line.split()
        t[int(i)].append(float(ts))
        w[int(i)].append(int(delay) / 1e9)
    return t, w


def waited(t, w, i, t0, t1):
    k0 = max(bisect.bisect_right(t[i], t0) - 1, 0)
    k1 = min(bisect.bisect_left(t[i], t1), len(t[i]) - 1)
    return w[i][k1] - w[i][k0]


def count(c, t, w, s, e, lat, p50):
    longest = max(waited(t, w, i, s, e) for i in t)
    c['slow'] += 1
    c['half'] += longest >= 0.5 * (lat - p50)
    c['3ms'] += longest >= 0.003


total = collections.Counter()
unloaded = collections.Counter()
for d in sys.argv[1:]:
    start, end = (float(x) for x in open(d + '/window').read().split())
    tx = transactions(d)
    alone = sorted(lat for s, _, lat in tx if start - 4 < s < start)
    p50, p99 = alone[len(alone) // 2], alone[int(len(alone) * 0.99)]
    t, w = waits(d)
    if not t or end > min(times[-1] for times in t.values()):
        sys.exit('%s: no samples, or the job outlasted them' % d)
    c = collections.Counter()
    control = collections.Counter()
    for s, e, lat in tx:
        if start - 4 < s < start and lat > p99:
            count(control, t, w, s, e, lat, p50)
        if not start <= s < end:
            continue
        c['during'] += 1
        if lat > p99:
            count(c, t, w, s, e, lat, p50)
    total.update(c)
    unloaded.update(control)
    print('%s: %d transactions during the job, %d slower than the unloaded p99 (%.2f ms); '
          'a process waited for a CPU for half their excess or more in %d, for 3 ms or more in %d'
          % (d.rsplit('/', 1)[-1], c['during'], c['slow'], p99 * 1e3, c['half'], c['3ms']))
for label, c in (('all jobs', total), ('control, the 4 s before each job', unloaded)):
    print('%s: %d slow transactions; a run-queue wait of half their excess or more: %.0f%%; of 3 ms or more: %.0f%%'
          % (label, c['slow'], 100 * c['half'] / max(c['slow'], 1), 100 * c['3ms'] / max(c['slow'], 1)))
