#!/usr/bin/env bash
# bench/backfill.sh -- backfill_fk against the hand-written UPDATE ... FROM.
#
#   bash bench/backfill.sh [--rows N] [--parents N]
#
# A child of N rows (default 5,000,000) names its parent (default 20,000
# keywords) by (tenant_id, keyword); 0.1% of the child rows name no parent.
# Every run starts from an identical fresh copy of the child, in one
# throwaway cluster (settings in bench/common.sh), and reports wall time and
# WAL bytes.  Not a test: run it by hand; results go in the README.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
bench_enter "$HERE/$(basename "$0")" "$@"

ROWS=5000000
PARENTS=20000
while [ $# -gt 0 ]; do
    case $1 in
        --rows) ROWS=$2; shift 2 ;;
        --parents) PARENTS=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N] [--parents N]" >&2; exit 2 ;;
    esac
done

echo "backfill: $ROWS child rows, $PARENTS parents, 0.1% orphans"
q <<SQL
CREATE EXTENSION IF NOT EXISTS dedup_ext;
CREATE TABLE keywords (id int PRIMARY KEY, tenant_id int NOT NULL, keyword text NOT NULL);
INSERT INTO keywords SELECT g, g % 10, 'keyword-' || g FROM generate_series(1, $PARENTS) g;
CREATE TABLE tags_src AS
SELECT g::bigint AS id, (k % 10) AS tenant_id,
       CASE WHEN g % 1000 = 0 THEN 'missing-' || g ELSE 'keyword-' || k END AS keyword,
       NULL::int AS keyword_id, 'payload-' || g AS note
  FROM generate_series(1, $ROWS) g, LATERAL (SELECT (1 + (g::bigint * 7919) % $PARENTS)::int AS k) s;
VACUUM ANALYZE keywords;
SQL

fresh() {
    q <<SQL
DROP TABLE IF EXISTS image_tags;
CREATE TABLE image_tags AS SELECT * FROM tags_src;
ALTER TABLE image_tags ADD PRIMARY KEY (id);
VACUUM ANALYZE image_tags;
SQL
}

fresh
measure "hand-written UPDATE ... FROM" \
    "UPDATE image_tags t SET keyword_id = k.id FROM keywords k
      WHERE t.keyword_id IS NULL AND t.tenant_id = k.tenant_id AND t.keyword = k.keyword"
fresh
measure "backfill_fk(archive => false)" \
    "SELECT * FROM backfill_fk('image_tags', 'keyword_id', 'keywords', '{tenant_id,keyword}', archive => false)"
fresh
measure "backfill_fk() (archive on, default)" \
    "SELECT * FROM backfill_fk('image_tags', 'keyword_id', 'keywords', '{tenant_id,keyword}')"
q -c "SELECT 'linked ' || count(keyword_id) || ', NULL ' || count(*) FILTER (WHERE keyword_id IS NULL) FROM image_tags"
report "hand-written UPDATE ... FROM"
