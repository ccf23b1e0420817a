#!/usr/bin/env bash
# bench/passes.sh -- a background dedup with nothing else running: how long
# each of its passes takes and how many of the table's pages each reads.
#
#   bash bench/passes.sh [--rows N] [--rounds R] [--clustered]
#
# payments: N rows (default 10,000,000) with 1% duplicates, one in every
# hundred rows and so on every page (as in bench/background.sh), or with
# --clustered the last 1% repeating the 1% before them (an import run
# twice: the duplicates on the table's last pages).  R times (default 4):
# dedup_table(..., background => true, batch_size => 10000), then
# dedup_rollback and VACUUM ANALYZE for the next round (the rollback puts
# the losers back at the table's end: from the second round on, the losers
# are on its last pages whatever the layout).  Prints each job's
# wall time and its passes' (from the worker's log lines at debug2: a pass
# is a "scanning" step; the pages read by each pass after the first).  Run
# it against two builds of the extension to compare them.  Not a test.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
BENCH_SETTINGS+=(-o logging_collector=on -o log_rotation_age=0 -o log_rotation_size=0)
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=10000000
ROUNDS=4
CLUSTERED=false
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --clustered) CLUSTERED=true; shift ;;
        *) echo "usage: $0 [--rows N] [--rounds R] [--clustered]" >&2; exit 2 ;;
    esac
done

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"
if [ "$CLUSTERED" = true ]; then
    q <<SQL
DROP TABLE IF EXISTS payments;
CREATE TABLE payments (id bigserial PRIMARY KEY, transaction_id text, amount numeric, status text);
INSERT INTO payments (id, transaction_id, amount, status)
SELECT g, lpad(to_hex(CASE WHEN g > $ROWS - $ROWS / 100 THEN g - $ROWS / 100 ELSE g END), 24, 'x'),
       (g % 10000)::numeric / 100, 'settled'
  FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE payments;
SQL
else
    load_payments payments "$ROWS" 100
fi
echo "payments: $ROWS rows, $(q -c "SELECT duplicate_rows FROM dedup_audit('payments', '{transaction_id}')") duplicates, clustered $CLUSTERED"
q -c "ALTER SYSTEM SET log_min_messages = debug2" -c "ALTER SYSTEM SET log_line_prefix = '%n [%p] '" \
  -c "SELECT pg_reload_conf()" >/dev/null
LOG=$(q -c "SELECT current_setting('data_directory') || '/' || pg_current_logfile()")

for r in $(seq 1 "$ROUNDS"); do
    offset=$(stat -c %s "$LOG")
    JOB=$(q -c "SELECT job_id FROM dedup_table('payments', '{transaction_id}', background => true, batch_size => 10000)")
    q -c "SELECT dedup_wait($JOB, '600s')" >/dev/null
    sleep 0.2
    q -c "SELECT format('job %s: %s s, %s passes, %s batches, %s rows deleted', job_id,
                        round(extract(epoch FROM finished_at - started_at)::numeric, 2),
                        passes, batches_done, rows_deleted)
            FROM dedup_jobs WHERE job_id = $JOB"
    # a "scanning" step runs from its "begins" line to its "committed" one
    tail -c +"$((offset + 1))" "$LOG" | awk '
        / step begins in phase "scanning"/ { t0 = $1; scanning = 1; next }
        /the pass read [0-9]+ of the [0-9]+ pages/ { for (i = 1; i <= NF; i++) if ($i == "read") pages = $(i + 1) " of " $(i + 4) " pages" }
        / step committed/ && scanning { n++; printf "  pass %d: %.2f s%s\n", n, $1 - t0, pages ? ", read " pages : ""; scanning = 0; pages = "" }'
    q -c "SELECT dedup_rollback($JOB)" >/dev/null
    q -c "VACUUM ANALYZE payments"
done
