#!/usr/bin/env bash
# bench/background.sh -- a background dedup while pgbench writes the table.
#
#   bash bench/background.sh [--rows N] [--seconds S] [--rate TPS] [--add-unique] [--checkpoint]
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
#
# By default the tables were written after the last checkpoint, so neither
# the job nor the foreground run writes full-page images.  --checkpoint
# runs a CHECKPOINT before each, and before the workload's unloaded run: as
# for a table last written before the last checkpoint, the first change of
# each page writes all of it to the WAL (8 kB per deleted row here, as the
# duplicates are spread over every page, and 8 kB for most of the
# workload's updates, in both of its runs).
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
CHECKPOINT=false
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --seconds) SECONDS_ALONE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --add-unique) UNIQUE=true; shift ;;
        --checkpoint) CHECKPOINT=true; shift ;;
        *) echo "usage: $0 [--rows N] [--seconds S] [--rate TPS] [--add-unique] [--checkpoint]" >&2; exit 2 ;;
    esac
done
WORK=$(mktemp -d)

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"
# A server that has been running reuses its old WAL segments; a new cluster
# creates and zero-fills each 16 MB segment while holding WALWriteLock,
# which stalls every commit for about 40 ms, whoever wrote the WAL.  So that
# the run measures the job and not the cluster's youth, 4 GB of WAL are
# written and a checkpoint recycles them as the segments to come (enough
# for the load, the job and the foreground run).
q -c "SELECT count(pg_logical_emit_message(false, 'bench', repeat('x', 1048576))) FROM generate_series(1, 4096)" >/dev/null
q -c "CHECKPOINT"
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
# the load's table files go to disk now, not while the workload is measured
sync
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
    (cd "$WORK" && exec pgbench -n -f write.sql -c 4 -j 2 -R "$RATE" -T "$2" \
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

# One session watches dedup_progress once a second for the whole run, as a
# DBA would with \watch 1, through both the unloaded and the loaded phase so
# that it costs the same in both.  A new connection for each look would move
# the p99 by itself: each backend start stalls the workload's transactions
# for a few milliseconds on this 2-core machine (a psql -c 'SELECT 1' every
# 0.3 s took the unloaded p99 from 1.1 to 5.6 ms).  Nothing else connects
# while the workload runs.
psql -X -q -At >"$WORK/watch" 2>&1 <<<"SELECT format('%s|%s|%s|%s|%s|%s|%s', extract(epoch FROM pg_catalog.clock_timestamp()), job_id,
                     phase, percent, rows_per_second, batches_done, eta)
   FROM dedup_progress \\watch 1" &
WATCH=$!

echo
echo "== 1. workload alone, ${SECONDS_ALONE} s at $RATE tps"
# with --checkpoint the workload's own updates write full-page images too
# (each first touch of a page after a checkpoint), in both phases alike
[ "$CHECKPOINT" = true ] && q -c "CHECKPOINT"
run_pgbench alone "$SECONDS_ALONE"
ALONE=$(stats alone)
grep -E "^tps|latency average" "$WORK/alone.out" || true

echo
echo "== 2. workload + background dedup (batch_size 10000, add_unique $UNIQUE)"
LOGFILE=$(q -c "SELECT current_setting('data_directory') || '/' || pg_current_logfile()")
WAITS0=$(grep -c "still waiting for" "$LOGFILE" || true)
[ "$CHECKPOINT" = true ] && q -c "CHECKPOINT"
LSN0=$(q -c "SELECT pg_current_wal_lsn()")
# One session submits the job and waits for it.  It connects first, 5 s
# before it submits, for the same reason as the watching session.
q >"$WORK/job" <<SQL &
SELECT pg_sleep(5) AS slept \gset
SELECT job_id FROM dedup_table('payments', '{transaction_id}', background => true,
                               batch_size => 10000, add_unique => $UNIQUE) \gset
SELECT :job_id;
SELECT dedup_wait(:job_id);
SQL
SUBMIT=$!
# One pgbench run for the whole job, stopped 2 s after the job's end.  A
# background command of a script ignores SIGINT, so it gets SIGTERM, which
# loses what pgbench had not yet written of its per-transaction log: the
# last few kB, from after the job (the stats use the job's window only).
run_pgbench loaded 3600 &
PGB=$!
wait "$SUBMIT"
{ read -r JOB; read -r STATE; } <"$WORK/job"
sleep 2
pkill -TERM -P "$PGB" -x pgbench 2>/dev/null || true
wait "$PGB" || true
kill "$WATCH" 2>/dev/null || true
wait "$WATCH" 2>/dev/null || true
LSN1=$(q -c "SELECT pg_current_wal_lsn()")
# the job's phases over time, from the watching session: "epoch|phase"
awk -F'|' -v job="$JOB" '$2 == job { print $1 "|" $3 }' "$WORK/watch" >"$WORK/phases"
awk -F'|' -v job="$JOB" '$2 == job && n++ % 5 == 0 {
        printf "  %s  %s%%  %s rows/s  batches %s  eta %s\n", $3, $4, $5, $6, $7 }' "$WORK/watch"
echo "job $JOB: $STATE"
q -c "SELECT format('  job: %s s, %s rows deleted, %s batches, %s passes, %s retries, unique index %s',
                    round(extract(epoch FROM finished_at - started_at)::numeric, 2), rows_deleted,
                    batches_done, passes, retries, unique_index)
        FROM dedup_jobs WHERE job_id = $JOB"
WINDOW=$(q -c "SELECT extract(epoch FROM started_at) || ' ' || extract(epoch FROM finished_at) FROM dedup_jobs WHERE job_id = $JOB")
LOADED=$(stats loaded $WINDOW)
WAITS=$(( $(grep -c "still waiting for" "$LOGFILE" || true) - WAITS0 ))
JOBSECS=$(q -c "SELECT extract(epoch FROM finished_at - started_at) FROM dedup_jobs WHERE job_id = $JOB")
JOBWAL=$(q -c "SELECT pg_wal_lsn_diff('$LSN1', '$LSN0')::bigint")
q -c "SELECT format('  after: %s duplicate rows, %s rows', duplicate_rows, total_rows) FROM dedup_audit('payments', '{transaction_id}')"

echo
echo "== 3. foreground dedup_table(strategy => 'delete', add_unique $UNIQUE) on a copy, no workload"
MEASURE_CHECKPOINT=$CHECKPOINT measure "foreground delete" "SELECT * FROM dedup_table('payments_fg', '{transaction_id}', strategy => 'delete', add_unique => $UNIQUE)"

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
    IFS='|' read -r _ n p50 p99 mx <<<"$(stats loaded "$from" "$to")"
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
