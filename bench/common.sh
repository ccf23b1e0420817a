# bench/common.sh -- shared by the benchmarks: a tuned throwaway cluster and
# a timer that reports wall time and WAL bytes of one SQL statement.
#
# Sourced by bench/*.sh.  A benchmark re-executes itself inside pg_virtualenv
# (as the postgres user when run as root, since initdb refuses root).

BENCH_SETTINGS=(-o shared_buffers=2GB -o work_mem=256MB -o maintenance_work_mem=1GB
                -o max_wal_size=8GB -o checkpoint_timeout=30min -o synchronous_commit=on)

# bench_enter "$0" "$@": run the calling script inside a throwaway cluster.
bench_enter() {
    local script=$1; shift
    [ -n "${BENCH_INNER:-}" ] && return 0
    export BENCH_INNER=1
    if [ "$(id -u)" -eq 0 ]; then
        local copy
        copy=$(mktemp -d /tmp/dedup_bench.XXXXXX)
        cp -r "$(dirname "$script")" "$copy/bench"
        chown -R postgres "$copy"
        exec runuser -u postgres -- env BENCH_INNER=1 PGPORT="${PGPORT:-55490}" \
            pg_virtualenv "${BENCH_SETTINGS[@]}" bash "$copy/bench/$(basename "$script")" "$@"
    fi
    exec env PGPORT="${PGPORT:-55490}" pg_virtualenv "${BENCH_SETTINGS[@]}" bash "$script" "$@"
}

q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@"; }

# peak_anon PID: sample the process's private memory (RssAnon: its own
# allocations, not the shared buffers it touches) every 50 ms until it
# exits; print the highest value in kB
peak_anon() {
    local pid=$1 peak=0 kb
    while kb=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) && [ -n "$kb" ]; do
        [ "$kb" -gt "$peak" ] && peak=$kb
        sleep 0.05
    done
    echo "$peak"
}

# measure LABEL SQL: prints "LABEL|seconds|wal_bytes|peak_kB" and keeps it
# in RESULTS.  It starts with a CHECKPOINT (unless MEASURE_CHECKPOINT=false),
# so that every run writes the same full-page images.  The SQL runs in one
# session whose backend's peak private memory is sampled while it runs.
RESULTS=()
measure() {
    local label=$1 sql=$2 lsn0 lsn1 t0 t1 wal secs pidfile pid peak runner
    [ "${MEASURE_CHECKPOINT:-true}" = true ] && q -c "CHECKPOINT" >/dev/null
    pidfile=$(mktemp)
    lsn0=$(q -c "SELECT pg_current_wal_lsn()")
    t0=$(date +%s.%N)
    printf '\\o %s\nSELECT pg_backend_pid();\n\\o\n%s\n' "$pidfile" "$sql" | q >/dev/null &
    runner=$!
    until [ -s "$pidfile" ] || ! kill -0 "$runner" 2>/dev/null; do sleep 0.01; done
    pid=$(cat "$pidfile")
    peak=$(peak_anon "${pid:-0}")
    wait "$runner"
    t1=$(date +%s.%N)
    rm -f "$pidfile"
    lsn1=$(q -c "SELECT pg_current_wal_lsn()")
    wal=$(q -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    RESULTS+=("$label|$secs|$wal|$peak")
    printf '%-48s %8.2f s %10.1f MB WAL %8.1f MB peak\n' "$label" "$secs" \
        "$(awk -v w="$wal" 'BEGIN { print w / 1048576 }')" "$(awk -v k="$peak" 'BEGIN { print k / 1024 }')"
}

# report BASELINE_LABEL: the table of RESULTS with ratios to the baseline
report() {
    local base=$1 bsecs bwal line label secs wal peak
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r label secs wal peak <<<"$line"
        [ "$label" = "$base" ] && { bsecs=$secs; bwal=$wal; }
    done
    echo
    echo "| run | wall s | WAL MB | peak backend MB | time vs. $base | WAL vs. $base |"
    echo "|---|---|---|---|---|---|"
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r label secs wal peak <<<"$line"
        awk -v l="$label" -v s="$secs" -v w="$wal" -v p="$peak" -v bs="$bsecs" -v bw="$bwal" \
            'BEGIN { printf "| %s | %.2f | %.0f | %.0f | %.2fx | %.2fx |\n", l, s, w / 1048576, p / 1024, s / bs, (w + 1) / (bw + 1) }'
    done
}

# recycle_wal MB: MB of WAL written and a checkpoint, so that the WAL
# segments to come are recycled ones, as on a server that has been running:
# a new cluster creates and zero-fills each 16 MB segment while holding
# WALWriteLock, which stalls every commit for about 40 ms, whoever wrote the
# WAL (bench/background.sh says how much is enough)
recycle_wal() {
    q -c "SELECT count(pg_logical_emit_message(false, 'bench', repeat('x', 1048576))) FROM generate_series(1, $1)" >/dev/null
    q -c "CHECKPOINT"
}

# load_payments TABLE ROWS EVERY: a payments table of ROWS rows whose
# every EVERY-th row repeats the transaction_id of the row before it (1%
# duplicates for 100; none for 0), vacuumed and analyzed
load_payments() {
    q <<SQL
DROP TABLE IF EXISTS $1 CASCADE;
CREATE TABLE $1 (id bigserial PRIMARY KEY, transaction_id text, amount numeric, status text);
INSERT INTO $1 (id, transaction_id, amount, status)
SELECT g, lpad(to_hex(CASE WHEN $3 > 0 AND g % $3 = 0 THEN g - 1 ELSE g END), 24, 'x'),
       (g % 10000)::numeric / 100, 'settled'
  FROM generate_series(1, $2) g;
SELECT setval('$1_id_seq', $2);
VACUUM ANALYZE $1;
SQL
}

# The write workload of bench/background.sh and bench/neighbours.sh, on a
# payments table of ROWS rows: each transaction updates a random row and
# inserts a new one; pgbench, 4 clients, at $RATE transactions a second.
# write_workload ROWS: its script, $WORK/write.sql
write_workload() {
    cat >"$WORK/write.sql" <<SQL
\set id random(1, $1)
BEGIN;
UPDATE payments SET amount = amount + 1 WHERE id = :id;
INSERT INTO payments (transaction_id, amount, status)
VALUES ('new-' || :client_id || '-' || txid_current(), 1, 'pending');
END;
SQL
}

# run_pgbench LABEL SECONDS: per-transaction log in $WORK/LABEL.*
run_pgbench() {
    (cd "$WORK" && exec pgbench -n -f write.sql -c 4 -j 2 -R "$RATE" -T "$2" \
        -l --log-prefix="$1" >"$WORK/$1.out" 2>&1)
}

# latencies LABEL [FROM_EPOCH TO_EPOCH]: the latencies (ms) of the
# transactions of pgbench run LABEL that started in the window [FROM, TO).
# pgbench -l: column 3 is the latency in us, columns 5-6 the epoch seconds
# and microseconds at which the transaction ended; a run stopped by SIGTERM
# may leave a last line cut short, which is skipped.
latencies() {
    cat "$WORK/$1".[0-9]* | awk -v from="${2:-0}" -v to="${3:-9e18}" '
        NF == 7 { t = $5 + $6 / 1e6 - $3 / 1e6; if (t >= from && t < to) print $3 / 1000 }'
}

# stats LABEL FILE...: "label|n|p50|p99|max" (ms) over the latencies in the files
stats() {
    local label=$1; shift
    cat "$@" | sort -n | awk -v label="$label" '
        { a[NR] = $1 }
        END {
            n = NR; if (n == 0) { printf "%s|0|0|0|0\n", label; exit }
            printf "%s|%d|%.2f|%.2f|%.2f\n", label, n, a[int(n * 0.50) + 1], a[int(n * 0.99) + 1], a[n]
        }'
}
