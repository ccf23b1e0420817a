#!/usr/bin/env bash
# bench/runqueue.sh -- during background dedups under the write workload,
# how much of the slow transactions' time the application's processes spent
# waiting for a CPU.
#
#   bash bench/runqueue.sh [--rows N] [--jobs J] [--rate TPS]
#
# payments and the write workload of bench/background.sh (N rows, default
# 10,000,000, 1% duplicates; pgbench, 4 clients at --rate, default 400
# transactions/s).  J times (default 5): pgbench runs 20 s; a session that
# connected 5 s earlier submits dedup_table(..., background => true,
# batch_size => 10000) and waits for it; meanwhile sched_sample reads, every
# millisecond, the CPU time and the run-queue wait of the four backends and
# of pgbench's threads (/proc/PID/task/TID/schedstat); dedup_rollback then
# puts the duplicates back.  bench/runqueue.py reports, among the
# transactions that started during the job and took longer than the p99 of
# the 4 seconds before it, those during which a process waited for a CPU
# for at least half of the excess over the unloaded median, and those with
# a wait of 3 ms or more.  Needs gcc and python3.  Not a test.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
BENCH_SETTINGS+=(-o max_worker_processes=16 -o max_wal_size=24GB)
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=10000000
JOBS=5
RATE=400
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N] [--jobs J] [--rate TPS]" >&2; exit 2 ;;
    esac
done
WORK=$(mktemp -d)
gcc -O2 -o "$WORK/sched_sample" "$HERE/sched_sample.c"

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"
recycle_wal 4096
load_payments payments "$ROWS" 100
sync
write_workload "$ROWS"

for j in $(seq 1 "$JOBS"); do
    DIR="$WORK/job$j"
    mkdir "$DIR"
    (cd "$DIR" && exec pgbench -n -f "$WORK/write.sql" -c 4 -j 2 -R "$RATE" -T 20 \
        -l --log-prefix=pb >"$DIR/pgbench.out" 2>&1) &
    PGBENCH=$!
    sleep 1
    TASKS=()
    for pid in $(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'"); do
        TASKS+=("/proc/$pid/task/$pid")
    done
    if [ "${#TASKS[@]}" -ne 4 ]; then
        echo "job $j: found ${#TASKS[@]} pgbench backends, not 4" >&2
        exit 1
    fi
    TASKS+=(/proc/"$PGBENCH"/task/*)
    # until about 19 s after pgbench started; a job that ends later is
    # reported as such by bench/runqueue.py
    "$WORK/sched_sample" 18 "$DIR/samples" "${TASKS[@]}" &
    SAMPLER=$!
    # connected now, so that its backend's start is outside the windows
    q >"$DIR/session" <<'SQL'
SELECT pg_sleep(5) AS slept \gset
SELECT extract(epoch FROM pg_catalog.clock_timestamp());
SELECT job_id FROM dedup_table('payments', '{transaction_id}', background => true,
                               batch_size => 10000) \gset
SELECT dedup_wait(:job_id) AS state \gset
SELECT extract(epoch FROM pg_catalog.clock_timestamp());
SELECT :'state', :job_id;
SQL
    wait "$SAMPLER"
    wait "$PGBENCH"
    sed -n '1,2p' "$DIR/session" | paste -sd' ' >"$DIR/window"
    IFS='|' read -r STATE JOB <<<"$(sed -n 3p "$DIR/session")"
    echo "job $j: $STATE"
    q -c "SELECT dedup_rollback($JOB)" >/dev/null
    q -c "VACUUM payments"
done
echo
python3 "$HERE/runqueue.py" "$WORK"/job*
