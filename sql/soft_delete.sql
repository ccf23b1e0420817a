--
-- soft_delete: soft-deleted items.  filter => 'deleted_at IS NULL' dedups only the
-- live rows; add_unique makes a partial unique index that serves
-- INSERT ... ON CONFLICT (name) WHERE deleted_at IS NULL DO UPDATE.
--
CREATE SCHEMA soft;
SET search_path = soft, public;

CREATE TABLE soft.items (
    id         int PRIMARY KEY,
    name       text NOT NULL,
    qty        int NOT NULL,
    deleted_at timestamp
);
--   a: 1, 2 live, 3 deleted      b: 4, 5 deleted, 6 live     c: 7 live
--   d: 8, 9 deleted              e: 10, 11, 12 live
INSERT INTO soft.items VALUES
  ( 1, 'a', 1, NULL), ( 2, 'a', 2, NULL), ( 3, 'a', 3, '2024-01-03'),
  ( 4, 'b', 4, '2024-01-04'), ( 5, 'b', 5, '2024-01-05'), ( 6, 'b', 6, NULL),
  ( 7, 'c', 7, NULL),
  ( 8, 'd', 8, '2024-01-08'), ( 9, 'd', 9, '2024-01-09'),
  (10, 'e', 10, NULL), (11, 'e', 11, NULL), (12, 'e', 12, NULL);

SELECT md5(string_agg(i::text, ',' ORDER BY id)) AS before_md5 FROM soft.items i \gset

-- all rows: expect total 12, distinct 5, 4 groups, 7 duplicate rows, largest 3
SELECT * FROM dedup_audit('items', '{name}');
-- live rows: expect total 7, distinct 4, 2 groups (a, e), 3 duplicate rows, largest 3
SELECT * FROM dedup_audit('items', '{name}', filter => 'deleted_at IS NULL');
SELECT key_values, group_rows FROM dedup_groups('items', '{name}', filter => 'deleted_at IS NULL')
 ORDER BY group_rows DESC, key_values::text;
-- expect a: 1 keep, 2 delete; e: 10 keep, 11 12 delete; no deleted row appears
SELECT row_id, decision, key_values
  FROM dedup_preview('items', '{name}', filter => 'deleted_at IS NULL')
 ORDER BY (row_id->>'id')::int;
-- dry run: 2 groups, 3 rows
SELECT job_id IS NULL AS no_job_id, state, duplicate_groups, rows_deleted
  FROM dedup_table('items', '{name}', filter => 'deleted_at IS NULL',
                   add_unique => true, dry_run => true);

CREATE TEMP TABLE r1 AS
SELECT * FROM dedup_table('items', '{name}', filter => 'deleted_at IS NULL', add_unique => true);
SELECT job_id AS jid, archive_table AS arch, unique_index AS uidx FROM r1 \gset
SELECT state, strategy, duplicate_groups, rows_deleted, rows_renamed,
       archive_table::text = 'dedup_archive.items_' || job_id AS archive_named_as_decided,
       unique_index IS NOT NULL AS has_index
  FROM r1;
-- the soft-deleted rows are untouched: 2, 11, 12 gone, 3, 4, 5, 8, 9 still here
SELECT id, name, deleted_at IS NOT NULL AS deleted FROM soft.items ORDER BY id;
SELECT id, name, dedup_action, dedup_survivor FROM :arch ORDER BY id;
SELECT params->>'filter' AS filter FROM dedup_jobs WHERE job_id = :jid;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid);

-- the partial unique index: unique, on (name), WHERE deleted_at IS NULL, not a constraint
SELECT i.indisunique, i.indisvalid, i.indnatts,
       pg_get_indexdef(i.indexrelid, 1, true) AS col,
       pg_get_expr(i.indpred, i.indrelid, true) AS predicate,
       EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) AS is_constraint
  FROM pg_index i WHERE i.indexrelid = :'uidx'::regclass;
SELECT indexrelid::regclass = :'uidx'::regclass AS is_uidx, indisprimary
  FROM pg_index WHERE indrelid = 'soft.items'::regclass ORDER BY indisprimary;

-- a new live duplicate is rejected
INSERT INTO soft.items VALUES (13, 'a', 13, NULL);
-- a deleted 'a' is fine; ON CONFLICT (name) WHERE deleted_at IS NULL uses the index:
-- 'a' updates live row 1 (qty 1 + 100), 'd' has no live row and is inserted
BEGIN;
INSERT INTO soft.items VALUES (13, 'a', 13, '2024-02-01');
INSERT INTO soft.items AS i VALUES (14, 'a', 100, NULL), (15, 'd', 100, NULL)
ON CONFLICT (name) WHERE deleted_at IS NULL DO UPDATE SET qty = i.qty + EXCLUDED.qty
RETURNING id, name, qty, deleted_at;
-- reviving the soft-deleted 'a' (id 3) collides with the live one
SAVEPOINT s;
UPDATE soft.items SET deleted_at = NULL WHERE id = 3;
ROLLBACK TO s;
SELECT id, name, qty, deleted_at IS NOT NULL AS deleted FROM soft.items WHERE name IN ('a', 'd') ORDER BY id;
ROLLBACK;
-- without the WHERE the partial index does not match: PostgreSQL refuses
INSERT INTO soft.items VALUES (14, 'a', 100, NULL)
ON CONFLICT (name) DO UPDATE SET qty = EXCLUDED.qty;

-- rollback: back to the original 12 rows, index gone
SELECT dedup_rollback(:jid) AS restored;
SELECT md5(string_agg(i::text, ',' ORDER BY id)) = :'before_md5' AS exact FROM soft.items i;
SELECT to_regclass(:'uidx') IS NULL AS index_dropped, to_regclass(:'arch') IS NULL AS archive_dropped;

-- a filter over several columns, keep an ORDER BY list:
-- live rows with qty > 1: a: only 2; b: only 6; e: 10, 11, 12 -> 12 (highest qty) keeps
SELECT row_id, decision FROM dedup_preview('items', '{name}', keep => 'qty DESC',
                                           filter => 'deleted_at IS NULL AND qty > 1')
 ORDER BY (row_id->>'id')::int;
-- the deleted rows alone (filter the other way): b: 4 keep, 5 delete; d: 8 keep, 9 delete
CREATE TEMP TABLE r2 AS
SELECT * FROM dedup_table('items', '{name}', filter => 'deleted_at IS NOT NULL', add_unique => true);
SELECT job_id AS jid2, unique_index AS uidx2 FROM r2 \gset
SELECT state, duplicate_groups, rows_deleted FROM r2;
SELECT id FROM soft.items ORDER BY id;
SELECT pg_get_expr(indpred, indrelid, true) AS predicate
  FROM pg_index WHERE indexrelid = :'uidx2'::regclass;
SELECT dedup_rollback(:jid2) AS restored;
SELECT md5(string_agg(i::text, ',' ORDER BY id)) = :'before_md5' AS exact FROM soft.items i;

RESET search_path;
