#!/usr/bin/env bash
# bench/background.sh -- a background dedup while pgbench writes the table.
#
#   bash bench/background.sh [--rows N] [--seconds S] [--rate TPS] [--add-unique]
#
# payments: N rows (default 10,000,000), 1% duplicates of a 24-character
# transaction_id (as in bench/dedup.sh).  A pgbench write workload on the same
# table (each transaction: UPDATE one random row, INSERT one new row; --rate
# transactions per second, default 400, 4 clients) runs
#   1. alone for S seconds (default 60): the unloaded TPS and latency;
#   2. while dedup_table(..., background => true, batch_size => 10000) runs
#      (with --add-unique: and add_unique => true, whose last phase is
#      CREATE UNIQUE INDEX CONCURRENTLY), until the job is done: the loaded
#      TPS and latency, over the transactions that ran during the job, and
#      by phase of the job.
# Then, on an identical copy and with no workload, the foreground
# dedup_table(..., strategy => 'delete') with the same add_unique, for the
# job's throughput against it.  Writers' lock waits: log_lock_waits with
# deadlock_timeout = 100ms logs every wait longer than 100 ms; the benchmark
# counts those lines and reports the longest transaction.  Not a test.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
BENCH_SETTINGS+=(-o logging_collector=on -o log_lock_waits=on -o deadlock_timeout=100ms
                 -o max_worker_processes=16)
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=10000000
SECONDS_ALONE=60
RATE=400
UNIQUE=false
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --seconds) SECONDS_ALONE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --add-unique) UNIQUE=true; shift ;;
        *) echo "usage: $0 [--rows N] [--seconds S] [--rate TPS] [--add-unique]" >&2; exit 2 ;;
    esac
done
WORK=$(mktemp -d)

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"
for t in payments payments_fg; do
    q <<SQL
DROP TABLE IF EXISTS $t CASCADE;
CREATE TABLE $t (id bigserial PRIMARY KEY, transaction_id text, amount numeric, status text);
INSERT INTO $t (id, transaction_id, amount, status)
SELECT g, lpad(to_hex(CASE WHEN g % 100 = 0 THEN g - 1 ELSE g END), 24, 'x'),
       (g % 10000)::numeric / 100, 'settled'
  FROM generate_series(1, $ROWS) g;
SELECT setval('${t}_id_seq', $ROWS);
VACUUM ANALYZE $t;
SQL
done
DUPS=$(q -c "SELECT duplicate_rows FROM dedup_audit('payments', '{transaction_id}')")
echo "payments: $ROWS rows, $DUPS duplicates"

cat >"$WORK/write.sql" <<SQL
\set id random(1, $ROWS)
BEGIN;
UPDATE payments SET amount = amount + 1 WHERE id = :id;
INSERT INTO payments (transaction_id, amount, status)
VALUES ('new-' || :client_id || '-' || txid_current(), 1, 'pending');
END;
SQL

# pgbench LABEL SECONDS: per-transaction log in $WORK/LABEL.*
run_pgbench() {
    (cd "$WORK" && pgbench -n -f write.sql -c 4 -j 2 -R "$RATE" -T "$2" \
        -l --log-prefix="$1" >"$WORK/$1.out" 2>&1)
}

# stats LABEL [FROM_EPOCH TO_EPOCH]: "label|n|p50|p99|max" (ms) over the
# transactions that started in the window (pgbench -l: column 3 is the
# latency in us, columns 5-6 the epoch seconds and microseconds)
stats() {
    cat "$WORK/$1"*.[0-9]* | awk -v from="${2:-0}" -v to="${3:-9e18}" '
        { t = $5 + $6 / 1e6; if (t >= from && t <= to) print $3 / 1000 }' | sort -n >"$WORK/$1.lat"
    awk -v label="$1" '
        { a[NR] = $1 }
        END {
            n = NR; if (n == 0) { printf "%s|0|0|0|0\n", label; exit }
            printf "%s|%d|%.2f|%.2f|%.2f\n", label, n, a[int(n * 0.50) + 1], a[int(n * 0.99) + 1], a[n]
        }' "$WORK/$1.lat"
}

echo
echo "== 1. workload alone, ${SECONDS_ALONE} s at $RATE tps"
run_pgbench alone "$SECONDS_ALONE"
ALONE=$(stats alone)
grep -E "^tps|latency average" "$WORK/alone.out" || true

echo
echo "== 2. workload + background dedup (batch_size 10000, add_unique $UNIQUE)"
LOGFILE=$(q -c "SELECT current_setting('data_directory') || '/' || pg_current_logfile()")
WAITS0=$(grep -c "still waiting for" "$LOGFILE" || true)
# pgbench has no graceful stop: 10-second runs back to back until the job ends
( i=0; while [ ! -e "$WORK/stop" ]; do run_pgbench "loaded_$i" 10; i=$((i + 1)); done ) &
PGB=$!
sleep 5
JOB=$(q -c "SELECT job_id FROM dedup_table('payments', '{transaction_id}', background => true,
                                           batch_size => 10000, add_unique => $UNIQUE)")
LSN0=$(q -c "SELECT pg_current_wal_lsn()")
# the job's phases over time (one look a second), for the latency per phase
: >"$WORK/phases"
i=0
while :; do
    STATE=$(q -c "SELECT state FROM dedup_jobs WHERE job_id = $JOB")
    case $STATE in done|failed|cancelled|paused|interrupted) break ;; esac
    q -c "SELECT extract(epoch FROM pg_catalog.clock_timestamp()) || '|' || phase
            FROM dedup_progress WHERE job_id = $JOB" >>"$WORK/phases" || true
    [ $((i % 5)) -eq 0 ] && { q -c "SELECT format('  %s  %s%%  %s rows/s  batches %s  eta %s', phase, percent, rows_per_second, batches_done, eta)
            FROM dedup_progress WHERE job_id = $JOB" || true; }
    i=$((i + 1))
    sleep 1
done
touch "$WORK/stop"
wait "$PGB"
LSN1=$(q -c "SELECT pg_current_wal_lsn()")
echo "job $JOB: $STATE"
q -c "SELECT format('  job: %s s, %s rows deleted, %s batches, %s passes, %s retries, unique index %s',
                    round(extract(epoch FROM finished_at - started_at)::numeric, 2), rows_deleted,
                    batches_done, passes, retries, unique_index)
        FROM dedup_jobs WHERE job_id = $JOB"
WINDOW=$(q -c "SELECT extract(epoch FROM started_at) || ' ' || extract(epoch FROM finished_at) FROM dedup_jobs WHERE job_id = $JOB")
LOADED=$(stats loaded_ $WINDOW)
WAITS=$(( $(grep -c "still waiting for" "$LOGFILE" || true) - WAITS0 ))
JOBSECS=$(q -c "SELECT extract(epoch FROM finished_at - started_at) FROM dedup_jobs WHERE job_id = $JOB")
JOBWAL=$(q -c "SELECT pg_wal_lsn_diff('$LSN1', '$LSN0')::bigint")
q -c "SELECT format('  after: %s duplicate rows, %s rows', duplicate_rows, total_rows) FROM dedup_audit('payments', '{transaction_id}')"

echo
echo "== 3. foreground dedup_table(strategy => 'delete', add_unique $UNIQUE) on a copy, no workload"
measure "foreground delete" "SELECT * FROM dedup_table('payments_fg', '{transaction_id}', strategy => 'delete', add_unique => $UNIQUE)"

FGSECS=$(IFS='|' read -r _ s _ <<<"${RESULTS[0]}"; echo "$s")
echo
echo "| workload | transactions | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
for line in "$ALONE" "$LOADED"; do
    IFS='|' read -r l n p50 p99 mx <<<"$line"
    echo "| $l | $n | $p50 | $p99 | $mx |"
done
# p99 per phase: each look at the job stands for the second before the next
echo
echo "| phase (seen for) | transactions | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
awk -F'|' '{ print $1, $2 }' "$WORK/phases" | awk '
    NR > 1 { print prev_t, $1, prev_p } { prev_t = $1; $1 = ""; prev_p = substr($0, 2) }' |
while read -r from to phase; do
    printf '%s|%s|%s\n' "$phase" "$from" "$to"
done | awk -F'|' '{ if (!($1 in first)) { first[$1] = $2; order[++n] = $1 } last[$1] = $3 }
    END { for (i = 1; i <= n; i++) print order[i] "|" first[order[i]] "|" last[order[i]] }' |
while IFS='|' read -r phase from to; do
    IFS='|' read -r _ n p50 p99 mx <<<"$(stats loaded_ "$from" "$to")"
    printf '| %s (%.0f s) | %s | %s | %s | %s |\n' "$phase" "$(awk -v a="$from" -v b="$to" 'BEGIN { print b - a }')" "$n" "$p50" "$p99" "$mx"
done
IFS='|' read -r _ _ _ p99a _ <<<"$ALONE"
IFS='|' read -r _ _ _ p99b mxb <<<"$LOADED"
awk -v a="$p99a" -v b="$p99b" -v w="$WAITS" -v js="$JOBSECS" -v fs="$FGSECS" -v d="$DUPS" -v wal="$JOBWAL" 'BEGIN {
    printf "\np99 with the job / alone: %.2fx (target <= 1.5x)\n", b / a
    printf "writer lock waits longer than 100 ms: %d (target 0)\n", w
    printf "background job: %.2f s for %d duplicates (%.0f rows/s), %.0f MB WAL while it ran\n", js, d, d / js, wal / 1048576
    printf "foreground delete: %.2f s (%.0f rows/s); background throughput = %.0f%% of foreground (target >= 50%%)\n", fs, d / fs, 100 * fs / js
}'
