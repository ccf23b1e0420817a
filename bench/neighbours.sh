#!/usr/bin/env bash
# bench/neighbours.sh -- what one busy process beside the write workload of
# bench/background.sh costs the workload's p99, on this machine.
#
#   bash bench/neighbours.sh [--rows N] [--rounds R] [--seconds S] [--rate TPS]
#                            [--only NAME[,NAME...]]
#
# The workload of bench/background.sh (pgbench, 4 clients at --rate, default
# 400 transactions/s; each transaction updates a random row of payments and
# inserts one), alternately alone and beside one neighbour, S seconds each
# (default 12), R times (default 3) for each neighbour.  Every neighbour runs
# as a background worker does: at nice 10, in a session of its own whose
# autogroup nice is 10 too (src/worker.c, lower_cpu_priority).
#   none    nothing: the two windows differ only by chance (the noise)
#   cpu     a shell busy loop: a CPU, and next to no memory traffic
#   faults  bench/faults.c: a CPU busy taking page faults on fresh memory
#           (needs gcc)
#   read    dd reading the table's file, 8 kB at a time, from the page cache
#           (what a scan through a ring buffer asks of the kernel, without
#           PostgreSQL)
#   read1m  the same, 1 MB at a time: the same bytes, 1/128 of the calls
#   hot     bench/memory.c (needs gcc, as walk and scatter do): the first
#           8 kB of the table's file, read again and again: read's system
#           calls and copying, from one cached page
#   zero    dd from /dev/zero, 8 kB at a time: system calls that fill a
#           buffer, no page cache
#   walk    bench/memory.c: a 256 MB buffer read and written end to end,
#           no system calls (memory traffic in user space)
#   scatter bench/memory.c: radix passes over 160 MB of 16-byte records
#           (the memory traffic of a pass's sort, without PostgreSQL)
#   scan    a backend scanning payments (SELECT count(*) without parallel
#           workers) again and again
#   insert  a backend inserting 100,000 rows into a table of its own in one
#           statement, then truncating it, again and again (WAL in bulk: what
#           a pass wrote into a logged work table)
#   hash    a backend calling dedup_key_candidates again and again on the
#           copy of payments without duplicates that pass uses: a pass's key
#           hashing and sorting alone, without a worker (and without its
#           naps, dedup_ext.worker_yield)
#   pass    background dedup jobs, one after the other, on a copy of payments
#           without duplicates: each makes the job's first pass (key hashing
#           and sorting, the window over the candidates) and finds nothing
# The verdict for each is the ratio of the pooled p99s beside it and alone.
# Not a test.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
BENCH_SETTINGS+=(-o max_worker_processes=16 -o max_wal_size=24GB)
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=10000000
ROUNDS=3
SECONDS_ALONE=12
RATE=400
ONLY=none,cpu,faults,read,read1m,hot,zero,walk,scatter,scan,insert,hash,pass
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECONDS_ALONE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N] [--rounds R] [--seconds S] [--rate TPS] [--only NAME[,NAME...]]" >&2; exit 2 ;;
    esac
done
WORK=$(mktemp -d)
case ",$ONLY," in *,faults,*) gcc -O2 -o "$WORK/faults" "$HERE/faults.c" ;; esac
case ",$ONLY," in *,hot,*|*,walk,*|*,scatter,*) gcc -O2 -o "$WORK/memory" "$HERE/memory.c" ;; esac

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"
recycle_wal 2048
load_payments payments "$ROWS" 100
case ",$ONLY," in *,pass,*|*,hash,*) load_payments payments_nodup "$ROWS" 0 ;; esac
q -c "CREATE TABLE IF NOT EXISTS neighbour_rows (id bigint, pad text)"
sync
write_workload "$ROWS"
TABLE_FILE="$(q -c "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('payments')")"

# as a background worker: nice 10, and its session's autogroup nice 10
NICE_SESSION='echo 10 >/proc/self/autogroup 2>/dev/null || true; exec nice -n 10'

# start_neighbour NAME: starts it in the background, its pid in NEIGHBOUR
start_neighbour() {
    case $1 in
        none) sleep 3600 & ;;
        faults) setsid bash -c "$NICE_SESSION $WORK/faults" & ;;
        cpu) setsid bash -c "$NICE_SESSION bash -c 'while :; do :; done'" & ;;
        read) setsid bash -c "$NICE_SESSION bash -c 'while :; do dd if=$TABLE_FILE of=/dev/null bs=8k status=none; done'" & ;;
        read1m) setsid bash -c "$NICE_SESSION bash -c 'while :; do dd if=$TABLE_FILE of=/dev/null bs=1M status=none; done'" & ;;
        zero) setsid bash -c "$NICE_SESSION dd if=/dev/zero of=/dev/null bs=8k status=none" & ;;
        hot) setsid bash -c "$NICE_SESSION $WORK/memory hot $TABLE_FILE" & ;;
        walk|scatter) setsid bash -c "$NICE_SESSION $WORK/memory $1" & ;;
        scan|insert|hash|pass)
            # one session; pass jobs lower their own workers
            # (dedup_ext.worker_nice), the backend of the others is lowered
            # below
            {
                echo "SET max_parallel_workers_per_gather = 0;"
                for _ in $(seq 1 1000); do
                    if [ "$1" = scan ]; then
                        echo "SELECT count(*) FROM payments;"
                    elif [ "$1" = hash ]; then
                        echo "SELECT count(*) FROM dedup_key_candidates('payments_nodup', '{transaction_id}');"
                    elif [ "$1" = insert ]; then
                        echo "INSERT INTO neighbour_rows SELECT g, repeat('x', 60) FROM generate_series(1, 100000) g;"
                        echo "TRUNCATE neighbour_rows;"
                    else
                        echo "SELECT job_id FROM dedup_table('payments_nodup', '{transaction_id}', background => true) \\gset"
                        echo "SELECT dedup_wait(:job_id);"
                    fi
                done
            } | psql -X -q -At -v ON_ERROR_STOP=1 "application_name=neighbour" >/dev/null & ;;
    esac
    NEIGHBOUR=$!
    case $1 in
        scan|insert|hash)
            local pid=""
            until [ -n "$pid" ]; do
                pid=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'neighbour'")
            done
            renice -n 10 -p "$pid" >/dev/null
            echo 10 >"/proc/$pid/autogroup" 2>/dev/null || true ;;
    esac
}

# stop_neighbour: ends it, and a pass job with it, before the next window
stop_neighbour() {
    pkill -P "$NEIGHBOUR" 2>/dev/null || true
    kill "$NEIGHBOUR" 2>/dev/null || true
    wait "$NEIGHBOUR" 2>/dev/null || true
    q -c "SELECT count(dedup_cancel(job_id)) FROM dedup_jobs WHERE state IN ('queued', 'running')" >/dev/null
    until [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker' OR application_name = 'neighbour'")" = 0 ]; do
        sleep 0.2
    done
}

echo
echo "| neighbour (nice 10, autogroup nice 10) | p99 alone ms | p99 beside it ms | ratio, pooled | each round |"
echo "|---|---|---|---|---|"
for name in ${ONLY//,/ }; do
    for r in $(seq 1 "$ROUNDS"); do
        run_pgbench "alone_$name$r" "$SECONDS_ALONE"
        latencies "alone_$name$r" >"$WORK/alone_$name$r.lat"
        start_neighbour "$name"
        sleep 1
        run_pgbench "beside_$name$r" "$SECONDS_ALONE"
        latencies "beside_$name$r" >"$WORK/beside_$name$r.lat"
        stop_neighbour
        IFS='|' read -r _ _ _ A _ <<<"$(stats x "$WORK/alone_$name$r.lat")"
        IFS='|' read -r _ _ _ B _ <<<"$(stats x "$WORK/beside_$name$r.lat")"
        awk -v a="$A" -v b="$B" 'BEGIN { printf "%.2fx\n", b / a }' >>"$WORK/rounds_$name"
    done
    IFS='|' read -r _ _ _ A _ <<<"$(stats x "$WORK"/alone_"$name"[0-9]*.lat)"
    IFS='|' read -r _ _ _ B _ <<<"$(stats x "$WORK"/beside_"$name"[0-9]*.lat)"
    awk -v n="$name" -v a="$A" -v b="$B" -v rs="$(paste -sd, "$WORK/rounds_$name" | sed 's/,/, /g')" \
        'BEGIN { printf "| %s | %.2f | %.2f | %.2fx | %s |\n", n, a, b, b / a, rs }'
done
