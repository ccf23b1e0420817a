#!/usr/bin/env bash
# bench/dedup.sh -- dedup_table against the hand-written runbooks.
#
#   bash bench/dedup.sh [--rows N] [--only photos|payments]
#
# Two data sets of N rows (default 10,000,000):
#   photos:   property_photos, 16,000 keys (property_pk, photo_id), ~99.8% duplicates
#   payments: payments, 1% duplicates of a 24-character text transaction_id
# On identical fresh copies, in one throwaway cluster (bench/common.sh):
#   - the floor: one GROUP BY over the key (read only);
#   - the runbook sequence: full backup copy, DELETE ... row_number() > 1,
#     ADD UNIQUE, VACUUM FULL;
#   - the best single hand-written statement: DELETE ... row_number() > 1,
#     then CREATE UNIQUE INDEX; for payments also DELETE ... USING self-join
#     (quadratic in a group's size: only with small groups);
#   - dedup_table(..., add_unique => true) with its archive, strategy delete,
#     rewrite and auto (which counts the losers before it rewrites), and
#     rewrite without archive; and what 'auto' would choose.
# Reports wall time, WAL bytes, the backend's peak private memory and the
# final table + index size.  Not a test.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=10000000
ONLY=
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N] [--only photos|payments]" >&2; exit 2 ;;
    esac
done

q -c "CREATE EXTENSION IF NOT EXISTS dedup_ext"

size() { q -c "SELECT pg_size_pretty(pg_total_relation_size('$1'))"; }

# fresh SRC DST: an identical copy with a primary key, vacuumed and analyzed
fresh() {
    q <<SQL
DROP TABLE IF EXISTS $2 CASCADE;
DROP TABLE IF EXISTS ${2}_backup;
CREATE TABLE $2 AS SELECT * FROM $1;
ALTER TABLE $2 ADD PRIMARY KEY (id);
VACUUM ANALYZE $2;
SQL
}

run_set() {
    local name=$1 src=$2 key=$3 keyarr=$4
    RESULTS=()
    echo
    echo "== $name: $ROWS rows, key ($key)"
    fresh "$src" t
    q -c "SELECT strategy FROM dedup_table('t', '$keyarr', dry_run => true)" | sed 's/^/    auto chooses: /'
    measure "floor: GROUP BY key" "SELECT count(*) FROM (SELECT 1 FROM t GROUP BY $key) g"

    measure "runbook: backup + DELETE row_number + ADD UNIQUE + VACUUM FULL" "
CREATE TABLE t_backup AS SELECT * FROM t;
DELETE FROM t WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY $key ORDER BY id) rn FROM t) s WHERE rn > 1);
ALTER TABLE t ADD CONSTRAINT t_key UNIQUE ($key);
VACUUM FULL t;"
    echo "    size after: $(size t)"

    if [ "$name" = payments ]; then
        # small groups: the self-join (quadratic in a group's size) is the
        # faster hand-written DELETE here
        fresh "$src" t
        measure "hand-written: DELETE USING self-join + CREATE UNIQUE INDEX" "
DELETE FROM t a USING t b WHERE a.transaction_id = b.transaction_id AND a.id > b.id;
CREATE UNIQUE INDEX t_key ON t ($key);"
        echo "    size after: $(size t)"
    fi
    fresh "$src" t
    measure "hand-written: DELETE row_number + CREATE UNIQUE INDEX" "
DELETE FROM t WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY $key ORDER BY id) rn FROM t) s WHERE rn > 1);
CREATE UNIQUE INDEX t_key ON t ($key);"
    echo "    size after: $(size t)"

    for strategy in delete rewrite; do
        fresh "$src" t
        measure "dedup_table(add_unique, strategy => $strategy)" \
            "SELECT * FROM dedup_table('t', '$keyarr', add_unique => true, strategy => '$strategy')"
        echo "    size after: $(size t)"
    done
    fresh "$src" t
    measure "dedup_table(add_unique, strategy => auto)" \
        "SELECT * FROM dedup_table('t', '$keyarr', add_unique => true)"
    echo "    size after: $(size t)"
    fresh "$src" t
    measure "dedup_table(add_unique, rewrite, archive => false)" \
        "SELECT * FROM dedup_table('t', '$keyarr', add_unique => true, strategy => 'rewrite', archive => false)"
    echo "    size after: $(size t)"
    report "runbook: backup + DELETE row_number + ADD UNIQUE + VACUUM FULL"
    report "hand-written: DELETE row_number + CREATE UNIQUE INDEX"
    if [ "$name" = payments ]; then
        report "hand-written: DELETE USING self-join + CREATE UNIQUE INDEX"
    fi
}

if [ "$ONLY" != payments ]; then
    q <<SQL
DROP TABLE IF EXISTS photos_src;
CREATE TABLE photos_src AS
SELECT g::bigint AS id, (g % 16000) / 40 AS property_pk, g % 16000 AS photo_id,
       'https://photos.example/' || (g % 16000) || '.jpg' AS url,
       timestamptz '2025-01-01' + (g || ' seconds')::interval AS created_at
  FROM generate_series(1, $ROWS) g;
SQL
    run_set photos photos_src "property_pk, photo_id" "{property_pk,photo_id}"
fi
if [ "$ONLY" != photos ]; then
    q <<SQL
DROP TABLE IF EXISTS payments_src;
CREATE TABLE payments_src AS
SELECT g::bigint AS id,
       lpad(to_hex(CASE WHEN g % 100 = 0 THEN g - 1 ELSE g END), 24, 'x') AS transaction_id,
       (g % 10000)::numeric / 100 AS amount, 'settled' AS status
  FROM generate_series(1, $ROWS) g;
SQL
    run_set payments payments_src "transaction_id" "{transaction_id}"
fi
