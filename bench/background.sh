#!/usr/bin/env bash
# bench/background.sh -- a background dedup while pgbench writes the table.
#
#   bash bench/background.sh [--rows N] [--rounds R] [--seconds S] [--rate TPS]
#                            [--add-unique] [--checkpoint] [--wal-compression]
#                            [--batch-delay MS] [--yield] [--worker-nice N]
#                            [--sched-idle] [--steps] [--alternate NAME=VALUE]
#
# payments: N rows (default 10,000,000), 1% duplicates of a 24-character
# transaction_id (as in bench/dedup.sh).  A pgbench write workload on the same
# table (each transaction: UPDATE one random row, INSERT one new row; --rate
# transactions per second, default 400, 4 clients) runs, R times (default 5):
#   1. alone for S seconds (default 12): the unloaded latency;
#   2. while dedup_table(..., background => true, batch_size => 10000) runs
#      (with --add-unique: and add_unique => true, whose last phase is
#      CREATE UNIQUE INDEX CONCURRENTLY), until the job is done: the loaded
#      latency, over the transactions that started during the job, and by
#      phase of the job;
#   3. then dedup_rollback puts the duplicates back for the next round.
# Then, R times on an identical copy and with no workload, the foreground
# dedup_table(..., strategy => 'delete') with the same add_unique, for the
# job's throughput against it.  Writers' lock waits: log_lock_waits with
# deadlock_timeout = 100ms logs every wait longer than 100 ms; the benchmark
# counts those lines.  Not a test.
#
# Why rounds: on the 2-core machine this was written on, the p99 of the
# same unloaded workload moves by 0.5x from one 30-second window to the
# next, and a job's window is about 4 seconds (1,600 transactions, whose
# p99 is the 16th slowest).  One job against one unloaded run measured the
# machine's noise as much as the job.  Each round puts an unloaded window
# right before its job; the verdict is on the pooled transactions of all
# rounds, and every round's own ratio is shown.
#
# By default the tables were written after the last checkpoint, so neither
# the job nor the foreground run writes full-page images.  --checkpoint
# runs a CHECKPOINT before each job and each foreground run, and before each
# unloaded window: as for a table last written before the last checkpoint,
# the first change of each page writes all of it to the WAL (8 kB per
# deleted row here, as the duplicates are spread over every page, and 8 kB
# for most of the workload's updates, in both of its windows).
# --wal-compression sets dedup_ext.wal_compression: the job (only) compresses
# those images, and those of its index build.  --batch-delay submits the job
# with that dedup_ext.batch_delay (default 0): a pause between batches.
# --yield sets dedup_ext.worker_yield on (off by default): the worker's
# passes and batches give their CPU to processes waiting for one.
# --worker-nice sets dedup_ext.worker_nice (default 10).  --sched-idle sets
# dedup_ext.worker_sched_idle on: the workers run at SCHED_IDLE, which does
# what it says only where autogroup scheduling does not reach them, as in a
# cpu cgroup of their own (bench/HISTORY.md).  --steps logs each step
# of the worker (log_min_messages debug2) and ends with bench/steps.py's
# table: which steps the slow transactions started in, and each job's naps.
# --alternate dedup_ext.NAME=VALUE sets that setting in the odd rounds and
# puts back its value of the run in the even ones (reloaded before each
# round's unloaded window), then gives the verdict of each half as well: two
# versions of a setting side by side in the same hour, which separate runs
# (whose unloaded p99 moves by half between hours) cannot compare.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
# one log file for the whole run: the lock waits (and --steps) are read from it
BENCH_SETTINGS+=(-o logging_collector=on -o log_rotation_age=0 -o log_rotation_size=0
                 -o log_lock_waits=on -o deadlock_timeout=100ms
                 -o max_worker_processes=16 -o max_wal_size=24GB)
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=10000000
ROUNDS=5
SECONDS_ALONE=12
RATE=400
UNIQUE=false
CHECKPOINT=false
WALZ=off
YIELD=off
NICE=10
SCHED_IDLE=off
STEPS=false
DELAY=0
ALTERNATE=
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECONDS_ALONE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --add-unique) UNIQUE=true; shift ;;
        --checkpoint) CHECKPOINT=true; shift ;;
        --wal-compression) WALZ=on; shift ;;
        --yield) YIELD=on; shift ;;
        --worker-nice) NICE=$2; shift 2 ;;
        --sched-idle) SCHED_IDLE=on; shift ;;
        --steps) STEPS=true; shift ;;
        --batch-delay) DELAY=$2; shift 2 ;;
        --alternate) ALTERNATE=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N] [--rounds R] [--seconds S] [--rate TPS] [--add-unique] [--checkpoint] [--wal-compression] [--batch-delay MS] [--yield] [--worker-nice N] [--sched-idle] [--steps] [--alternate dedup_ext.NAME=VALUE]" >&2; exit 2 ;;
    esac
done
if [ -n "$ALTERNATE" ] && ! [[ $ALTERNATE =~ ^dedup_ext\.[a-z_]+=[A-Za-z0-9_.]+$ ]]; then
    echo "--alternate: expected dedup_ext.NAME=VALUE, got \"$ALTERNATE\"" >&2; exit 2
fi
if [ -n "$ALTERNATE" ] && [ "$ROUNDS" -lt 2 ]; then
    echo "--alternate: needs two rounds or more, one of each half" >&2; exit 2
fi
WORK=$(mktemp -d)

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"
q -c "LOAD 'dedup_ext'" -c "ALTER SYSTEM SET dedup_ext.wal_compression = $WALZ" \
  -c "ALTER SYSTEM SET dedup_ext.worker_yield = $YIELD" -c "ALTER SYSTEM SET dedup_ext.worker_nice = $NICE" \
  -c "ALTER SYSTEM SET dedup_ext.worker_sched_idle = $SCHED_IDLE"
# --steps: the worker's step lines, stamped in epoch seconds, in one file
[ "$STEPS" = true ] && q -c "ALTER SYSTEM SET log_min_messages = debug2" \
    -c "ALTER SYSTEM SET log_line_prefix = '%n [%p] '"
q -c "SELECT pg_reload_conf()" >/dev/null
if [ -n "$ALTERNATE" ]; then
    ALT_NAME=${ALTERNATE%%=*}
    ALT_VALUE=${ALTERNATE#*=}
    ALT_BASE=$(q -c "LOAD 'dedup_ext'" -c "SHOW $ALT_NAME")
fi
# So that the run measures the job and not the cluster's youth (each new
# WAL segment stalls every commit while it is made, see recycle_wal), 12 GB
# of WAL are written and a checkpoint recycles them as the segments to
# come: enough for the load and every round with add_unique (each round's
# index build writes about 450 MB, and its rollback and vacuums as much
# again; with 4 GB the later rounds ran out and stalled every commit for 40
# ms at each new segment).  max_wal_size is large enough that no checkpoint comes in the
# middle either, which would make the next changes of every page write
# full-page images.
recycle_wal 12288
load_payments payments "$ROWS" 100
load_payments payments_fg "$ROWS" 100
# the load's table files go to disk now, not while the workload is measured
sync
DUPS=$(q -c "SELECT duplicate_rows FROM dedup_audit('payments', '{transaction_id}')")
echo "payments: $ROWS rows, $DUPS duplicates"

write_workload "$ROWS"

# median of the numbers on standard input
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# One session watches dedup_progress once a second for the whole run, as a
# DBA would with \watch 1, through both the unloaded and the loaded windows
# so that it costs the same in both.  A new connection for each look would
# move the p99 by itself: each backend start stalls the workload's
# transactions for a few milliseconds on this 2-core machine (a psql -c
# 'SELECT 1' every 0.3 s took the unloaded p99 from 1.1 to 5.6 ms).  While
# the workload runs, nothing else connects but the session that submits
# each job, 5 s before it submits.
psql -X -q -At >"$WORK/watch" 2>&1 <<<"SELECT format('%s|%s|%s|%s|%s|%s|%s', extract(epoch FROM pg_catalog.clock_timestamp()), job_id,
                     coalesce(phase, '(' || state || ', no phase yet)'), percent, rows_per_second, batches_done, eta)
   FROM dedup_progress \\watch 1" &
WATCH=$!

LOGFILE=$(q -c "SELECT current_setting('data_directory') || '/' || pg_current_logfile()")
WAITS0=$(grep -c "still waiting for" "$LOGFILE" || true)
: >"$WORK/rounds"
for r in $(seq 1 "$ROUNDS"); do
    echo
    echo "== round $r: workload alone for $SECONDS_ALONE s at $RATE tps, then with a background dedup (batch_size 10000, add_unique $UNIQUE, dedup_ext.wal_compression $WALZ, worker_yield $YIELD, worker_nice $NICE, worker_sched_idle $SCHED_IDLE, batch_delay $DELAY ms)"
    if [ -n "$ALTERNATE" ]; then
        if [ $((r % 2)) = 1 ]; then HALF=$ALT_VALUE; else HALF=$ALT_BASE; fi
        echo "   this round: $ALT_NAME = $HALF"
        q -c "ALTER SYSTEM SET $ALT_NAME = '$HALF'" -c "SELECT pg_reload_conf()" >/dev/null
        sleep 1
    fi
    # with --checkpoint the workload's own updates write full-page images
    # too (each first touch of a page after a checkpoint), in both windows
    [ "$CHECKPOINT" = true ] && q -c "CHECKPOINT"
    run_pgbench "alone$r" "$SECONDS_ALONE"
    latencies "alone$r" >"$WORK/alone$r.lat"

    [ "$CHECKPOINT" = true ] && q -c "CHECKPOINT"
    LSN0=$(q -c "SELECT pg_current_wal_lsn()")
    # The submitting session connects 5 s before it submits, for the same
    # reason as the watching session.
    q >"$WORK/job$r" <<SQL &
SELECT pg_sleep(5) AS slept \gset
SET dedup_ext.batch_delay = $DELAY;
SELECT job_id FROM dedup_table('payments', '{transaction_id}', background => true,
                               batch_size => 10000, add_unique => $UNIQUE) \gset
SELECT :job_id;
SELECT dedup_wait(:job_id);
SQL
    SUBMIT=$!
    # One pgbench run for the whole job, stopped 2 s after the job's end.  A
    # background command of a script ignores SIGINT, so it gets SIGTERM,
    # which loses what pgbench had not yet written of its per-transaction
    # log: the last few kB, from after the job (the stats use the job's
    # window only).
    run_pgbench "loaded$r" 3600 &
    PGB=$!
    wait "$SUBMIT"
    { read -r JOB; read -r STATE; } <"$WORK/job$r"
    sleep 2
    pkill -TERM -P "$PGB" -x pgbench 2>/dev/null || true
    wait "$PGB" || true
    LSN1=$(q -c "SELECT pg_current_wal_lsn()")
    echo "job $JOB: $STATE"
    q -c "SELECT format('  job: %s s, %s rows deleted, %s batches, %s passes, %s retries, unique index %s',
                        round(extract(epoch FROM finished_at - started_at)::numeric, 2), rows_deleted,
                        batches_done, passes, retries, unique_index)
            FROM dedup_jobs WHERE job_id = $JOB"
    q -c "SELECT format('  after: %s duplicate rows, %s rows', duplicate_rows, total_rows) FROM dedup_audit('payments', '{transaction_id}')"
    latencies "loaded$r" $(q -c "SELECT extract(epoch FROM started_at) || ' ' || extract(epoch FROM finished_at) FROM dedup_jobs WHERE job_id = $JOB") \
        >"$WORK/loaded$r.lat"
    JOBSECS=$(q -c "SELECT extract(epoch FROM finished_at - started_at) FROM dedup_jobs WHERE job_id = $JOB")
    JOBWAL=$(q -c "SELECT pg_wal_lsn_diff('$LSN1', '$LSN0')::bigint")
    IFS='|' read -r _ _ _ P99A _ <<<"$(stats x "$WORK/alone$r.lat")"
    IFS='|' read -r _ _ _ P99L MAXL <<<"$(stats x "$WORK/loaded$r.lat")"
    echo "$r|$JOB|$P99A|$P99L|$MAXL|$JOBSECS|$JOBWAL" >>"$WORK/rounds"

    # The job's phases over time, from the watching session, one latency
    # file per phase: each look at the job stands for the second before the
    # next.
    awk -F'|' -v job="$JOB" '$2 == job { print $1 "|" $3 }' "$WORK/watch" |
        awk -F'|' 'NR > 1 { print prev_t "|" $1 "|" prev_p } { prev_t = $1; prev_p = $2 }' |
    while IFS='|' read -r from to phase; do
        grep -qxF "$phase" "$WORK/phase_order" 2>/dev/null || echo "$phase" >>"$WORK/phase_order"
        latencies "loaded$r" "$from" "$to" >>"$WORK/phase_${phase// /_}.lat"
        awk -v a="$from" -v b="$to" 'BEGIN { print b - a }' >>"$WORK/phase_${phase// /_}.secs"
    done

    # Back to the duplicates for the next round: the vacuum frees the
    # deleted rows' space, so that the restored rows go back into the pages
    # (and not all to the end of the heap); the second one clears what the
    # rollback leaves.  Then the machine settles before the next unloaded
    # window.
    if [ "$r" -lt "$ROUNDS" ]; then
        q -c "VACUUM payments"
        q -c "SELECT dedup_rollback($JOB)" >/dev/null
        q -c "VACUUM ANALYZE payments"
        sync
        sleep 5
    fi
done
kill "$WATCH" 2>/dev/null || true
wait "$WATCH" 2>/dev/null || true
WAITS=$(( $(grep -c "still waiting for" "$LOGFILE" || true) - WAITS0 ))

echo
echo "== foreground dedup_table(strategy => 'delete', add_unique $UNIQUE) on a copy, no workload, $ROUNDS times"
for r in $(seq 1 "$ROUNDS"); do
    MEASURE_CHECKPOINT=$CHECKPOINT measure "foreground delete $r" "SELECT * FROM dedup_table('payments_fg', '{transaction_id}', strategy => 'delete', add_unique => $UNIQUE)"
    if [ "$r" -lt "$ROUNDS" ]; then
        q -c "VACUUM payments_fg"
        q -c "SELECT dedup_rollback(max(job_id)) FROM dedup_jobs WHERE relation = 'payments_fg'::regclass AND kind = 'dedup'" >/dev/null
        q -c "VACUUM ANALYZE payments_fg"
    fi
done
for line in "${RESULTS[@]}"; do IFS='|' read -r _ s _ <<<"$line"; echo "$s"; done >"$WORK/fg_secs"

echo
echo "| round | unloaded p99 ms | p99 during the job ms | ratio | max during the job ms | job s | WAL while the job ran MB | foreground s |"
echo "|---|---|---|---|---|---|---|---|"
paste -d'|' "$WORK/rounds" "$WORK/fg_secs" | while IFS='|' read -r r _ pa pl ml js wal fs; do
    awk -v r="$r" -v pa="$pa" -v pl="$pl" -v ml="$ml" -v js="$js" -v wal="$wal" -v fs="$fs" 'BEGIN {
        printf "| %d | %.2f | %.2f | %.2fx | %.2f | %.2f | %.0f | %.2f |\n", r, pa, pl, pl / pa, ml, js, wal / 1048576, fs }'
done

ALONE=$(stats "alone, all rounds" "$WORK"/alone*.lat)
LOADED=$(stats "with the job, all rounds" "$WORK"/loaded*.lat)
echo
echo "| workload | transactions | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
for line in "$ALONE" "$LOADED"; do
    IFS='|' read -r l n p50 p99 mx <<<"$line"
    echo "| $l | $n | $p50 | $p99 | $mx |"
done
echo
echo "| phase of the job (seen for, all rounds) | transactions | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
while read -r phase; do
    f=${phase// /_}
    IFS='|' read -r _ n p50 p99 mx <<<"$(stats "$phase" "$WORK/phase_$f.lat")"
    printf '| %s (%.0f s) | %s | %s | %s | %s |\n' "$phase" "$(awk '{ s += $1 } END { print s }' "$WORK/phase_$f.secs")" "$n" "$p50" "$p99" "$mx"
done < <(cat "$WORK/phase_order" 2>/dev/null)

IFS='|' read -r _ _ _ P99A _ <<<"$ALONE"
IFS='|' read -r _ _ _ P99L _ <<<"$LOADED"
RATIOS=$(awk -F'|' '{ printf "%s%.2fx", (NR > 1 ? ", " : ""), $4 / $3 }' "$WORK/rounds")
# full precision: printed with 6 digits, 1.72499 would be rounded twice, to 1.73
MEDRATIO=$(awk -F'|' '{ printf "%.17g\n", $4 / $3 }' "$WORK/rounds" | median)
JOBSECS=$(cut -d'|' -f6 "$WORK/rounds" | median)
JOBWAL=$(cut -d'|' -f7 "$WORK/rounds" | median)
FGSECS=$(median <"$WORK/fg_secs")
awk -v a="$P99A" -v b="$P99L" -v m="$MEDRATIO" -v rs="$RATIOS" -v n="$ROUNDS" -v w="$WAITS" \
    -v js="$JOBSECS" -v fs="$FGSECS" -v d="$DUPS" -v wal="$JOBWAL" 'BEGIN {
    printf "\np99 with the job / alone, all %d rounds pooled: %.2fx (target <= 1.5x); median of the rounds %.2fx; by round %s\n", n, b / a, m, rs
    printf "writer lock waits longer than 100 ms: %d (target 0)\n", w
    printf "background job (median of %d): %.2f s for %d duplicates (%.0f rows/s), %.0f MB WAL while it ran\n", n, js, d, d / js, wal / 1048576
    printf "foreground delete (median of %d): %.2f s (%.0f rows/s); background throughput = %.0f%% of foreground (target >= 50%%)\n", n, fs, d / fs, 100 * fs / js
}'
if [ -n "$ALTERNATE" ]; then
    echo
    for half in 1 0; do
        if [ "$half" = 1 ]; then value=$ALT_VALUE; else value=$ALT_BASE; fi
        rounds=$(seq 1 "$ROUNDS" | awk -v h="$half" '$1 % 2 == h')
        IFS='|' read -r _ _ _ A _ <<<"$(stats x $(for r in $rounds; do echo "$WORK/alone$r.lat"; done))"
        IFS='|' read -r _ _ _ B _ <<<"$(stats x $(for r in $rounds; do echo "$WORK/loaded$r.lat"; done))"
        M=$(awk -F'|' -v h="$half" '$1 % 2 == h { printf "%.17g\n", $4 / $3 }' "$WORK/rounds" | median)
        J=$(awk -F'|' -v h="$half" '$1 % 2 == h { print $6 }' "$WORK/rounds" | median)
        awk -v name="$ALT_NAME" -v v="$value" -v rs="$(echo $rounds | sed 's/ /, /g')" -v a="$A" -v b="$B" \
            -v m="$M" -v j="$J" -v fs="$FGSECS" 'BEGIN {
            printf "%s = %s (rounds %s): p99 alone %.2f ms, with the job %.2f ms: %.2fx pooled, median of the rounds %.2fx; job %.2f s (median), throughput %.0f%% of the foreground\n",
                name, v, rs, a, b, b / a, m, j, 100 * fs / j }'
    done
fi
if [ "$STEPS" = true ]; then
    echo
    python3 "$HERE/steps.py" "$LOGFILE" "$WORK"
    echo
    echo "each job's naps (the worker's DEBUG1 line):"
    grep -o 'dedup_ext job [0-9]*: gave the CPU.*' "$LOGFILE" || echo "none"
fi
