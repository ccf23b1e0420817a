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

# measure LABEL SQL: prints "LABEL|seconds|wal_bytes" and keeps it in RESULTS
RESULTS=()
measure() {
    local label=$1 sql=$2 lsn0 lsn1 t0 t1 wal secs
    q -c "CHECKPOINT" >/dev/null
    lsn0=$(q -c "SELECT pg_current_wal_lsn()")
    t0=$(date +%s.%N)
    q <<<"$sql" >/dev/null
    t1=$(date +%s.%N)
    lsn1=$(q -c "SELECT pg_current_wal_lsn()")
    wal=$(q -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    RESULTS+=("$label|$secs|$wal")
    printf '%-48s %8.2f s %10.1f MB WAL\n' "$label" "$secs" "$(awk -v w="$wal" 'BEGIN { print w / 1048576 }')"
}

# report BASELINE_LABEL: the table of RESULTS with ratios to the baseline
report() {
    local base=$1 bsecs bwal line label secs wal
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r label secs wal <<<"$line"
        [ "$label" = "$base" ] && { bsecs=$secs; bwal=$wal; }
    done
    echo
    echo "| run | wall s | WAL MB | time vs. $base | WAL vs. $base |"
    echo "|---|---|---|---|---|"
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r label secs wal <<<"$line"
        awk -v l="$label" -v s="$secs" -v w="$wal" -v bs="$bsecs" -v bw="$bwal" \
            'BEGIN { printf "| %s | %.2f | %.0f | %.2fx | %.2fx |\n", l, s, w / 1048576, s / bs, (w + 1) / (bw + 1) }'
    done
}
