--
-- nulls: NULL semantics both ways.  nulls_distinct => true (default): a row with a
-- NULL in any key column is never a duplicate.  false: NULLs compare equal and
-- add_unique makes UNIQUE NULLS NOT DISTINCT.
--
CREATE SCHEMA nulls;
SET search_path = nulls, public;

CREATE TABLE nulls.n (id int PRIMARY KEY, a int, b text, v int NOT NULL);
INSERT INTO nulls.n VALUES
  (1, 1, 'x', 10), (2, 1, 'x', 20),
  (3, NULL, 'x', 30), (4, NULL, 'x', 40),
  (5, NULL, NULL, 50), (6, NULL, NULL, 60),
  (7, 2, NULL, 70), (8, 2, NULL, 80),
  (9, 2, 'y', 90);
SELECT md5(string_agg(n::text, ',' ORDER BY id)) AS before_md5 FROM nulls.n n \gset

-- default: only (1,x) is a group; rows 3..8 have a NULL key.
-- expect total 9, 1 group, 1 duplicate row, largest 2, null_key_rows 6
SELECT * FROM dedup_audit('n', '{a,b}');
-- NULLs equal: (1,x) (NULL,x) (NULL,NULL) (2,NULL) are groups.
-- expect total 9, distinct 5, 4 groups, 4 duplicate rows, largest 2, null_key_rows 6
SELECT * FROM dedup_audit('n', '{a,b}', nulls_distinct => false);
-- a filter that is NULL (a IS NULL) excludes the row: rows 1, 2, 7, 8, 9.
-- expect total 5, 2 groups ((1,x), (2,NULL)), 2 duplicate rows, null_key_rows 2
SELECT * FROM dedup_audit('n', '{a,b}', filter => 'a > 0', nulls_distinct => false);
SELECT key_values, group_rows FROM dedup_groups('n', '{a,b}')
 ORDER BY group_rows DESC, key_values::text;
SELECT key_values, group_rows FROM dedup_groups('n', '{a,b}', nulls_distinct => false)
 ORDER BY group_rows DESC, key_values::text;
SELECT row_id, decision, key_values FROM dedup_preview('n', '{a,b}')
 ORDER BY (row_id->>'id')::int;
SELECT row_id, decision, key_values FROM dedup_preview('n', '{a,b}', nulls_distinct => false)
 ORDER BY (row_id->>'id')::int;

--
-- nulls distinct: only row 2 goes; the constraint lets NULL keys repeat
--
CREATE TEMP TABLE r1 AS SELECT * FROM dedup_table('n', '{a,b}', add_unique => true);
SELECT job_id AS jid1 FROM r1 \gset
SELECT state, duplicate_groups, rows_deleted, unique_index FROM r1;
SELECT id FROM nulls.n ORDER BY id;
SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
 WHERE conrelid = 'nulls.n'::regclass AND contype = 'u';
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid1);
BEGIN;
INSERT INTO nulls.n VALUES (10, NULL, 'x', 100), (11, 2, NULL, 110);
SELECT count(*) FROM nulls.n;
ROLLBACK;
INSERT INTO nulls.n VALUES (10, 1, 'x', 100);
SELECT dedup_rollback(:jid1) AS restored;
SELECT md5(string_agg(n::text, ',' ORDER BY id)) = :'before_md5' AS exact FROM nulls.n n;

--
-- NULLs not distinct: 2, 4, 6, 8 go; UNIQUE NULLS NOT DISTINCT
--
CREATE TEMP TABLE r2 AS
SELECT * FROM dedup_table('n', '{a,b}', nulls_distinct => false, add_unique => true);
SELECT job_id AS jid2, archive_table AS arch2 FROM r2 \gset
SELECT state, duplicate_groups, rows_deleted, unique_index FROM r2;
SELECT id, a, b FROM nulls.n ORDER BY id;
SELECT id, a, b, dedup_survivor FROM :arch2 ORDER BY id;
SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
 WHERE conrelid = 'nulls.n'::regclass AND contype = 'u';
SELECT (params->>'nulls_distinct') AS nulls_distinct FROM dedup_jobs WHERE job_id = :jid2;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid2);
-- the survivors of the groups with a NULL gone: their removed rows have no
-- row with their key left (grouped as the job grouped them)
BEGIN;
DELETE FROM nulls.n WHERE a IS NULL OR b IS NULL;
SELECT check_name, ok, detail FROM dedup_verify(:jid2) WHERE check_name = 'removed_rows_have_survivor';
ROLLBACK;
-- a NULL key now repeats no more
INSERT INTO nulls.n VALUES (10, NULL, 'x', 100);
INSERT INTO nulls.n VALUES (10, NULL, NULL, 100);
-- ON CONFLICT (a, b) finds the row with NULLs
BEGIN;
INSERT INTO nulls.n AS n VALUES (10, NULL, NULL, 999), (11, 2, NULL, 888), (12, 3, NULL, 777)
ON CONFLICT (a, b) DO UPDATE SET v = EXCLUDED.v
RETURNING id, a, b, v;
ROLLBACK;
SELECT dedup_rollback(:jid2) AS restored;
SELECT md5(string_agg(n::text, ',' ORDER BY id)) = :'before_md5' AS exact FROM nulls.n n;
SELECT count(*) AS unique_constraints FROM pg_constraint
 WHERE conrelid = 'nulls.n'::regclass AND contype = 'u';

--
-- rename with NULL keys and nulls_distinct => false: NULL || '-' || id is NULL,
-- so the result must still be unique (or the call refused, changing nothing)
--
CREATE TABLE nulls.codes (id int PRIMARY KEY, code text);
INSERT INTO nulls.codes VALUES (1, NULL), (2, NULL), (3, 'a'), (4, 'a'), (5, NULL);
SELECT md5(string_agg(c::text, ',' ORDER BY id)) AS codes_md5 FROM nulls.codes c \gset
-- the preview refuses as the call would (22004)
\set VERBOSITY sqlstate
SELECT row_id, decision, new_value
  FROM dedup_preview('codes', '{code}', action => 'rename', nulls_distinct => false)
 ORDER BY (row_id->>'id')::int;
CREATE TEMP TABLE r3 AS
SELECT * FROM dedup_table('codes', '{code}', action => 'rename', nulls_distinct => false,
                          add_unique => true);
\set VERBOSITY default
SELECT md5(string_agg(c::text, ',' ORDER BY id)) = :'codes_md5' AS unchanged FROM nulls.codes c;
-- without add_unique too: a NULL cannot be renamed into a unique value, so the
-- call is refused (22004) and nothing changes
SELECT state, duplicate_groups, rows_renamed
  FROM dedup_table('codes', '{code}', action => 'rename', nulls_distinct => false);
SELECT md5(string_agg(c::text, ',' ORDER BY id)) = :'codes_md5' AS unchanged FROM nulls.codes c;
SELECT * FROM dedup_audit('codes', '{code}', nulls_distinct => false);

--
-- a table without primary key: 'first' = lowest ctid, row_id {"ctid": ...}
--
CREATE TABLE nulls.np (a int, b text);
INSERT INTO nulls.np VALUES (1, NULL);
INSERT INTO nulls.np VALUES (1, NULL);
INSERT INTO nulls.np VALUES (NULL, NULL);
INSERT INTO nulls.np VALUES (1, 'x');
INSERT INTO nulls.np VALUES (NULL, NULL);
SELECT md5(string_agg(np::text, ',' ORDER BY np::text)) AS np_md5 FROM nulls.np np \gset
SELECT * FROM dedup_audit('np', '{a,b}');
SELECT * FROM dedup_audit('np', '{a,b}', nulls_distinct => false);
CREATE TEMP TABLE r4 AS
SELECT * FROM dedup_table('np', '{a,b}', nulls_distinct => false, add_unique => true);
SELECT job_id AS jid4, archive_table AS arch4 FROM r4 \gset
SELECT state, duplicate_groups, rows_deleted, unique_index FROM r4;
SELECT ctid, a, b FROM nulls.np ORDER BY ctid;
SELECT a, b, dedup_action, dedup_survivor FROM :arch4 ORDER BY a NULLS LAST, b;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid4);
SELECT dedup_rollback(:jid4) AS restored;
SELECT count(*), md5(string_agg(np::text, ',' ORDER BY np::text)) = :'np_md5' AS same_rows
  FROM nulls.np np;

-- a composite key with a NULL field is a value, not a NULL: its equality,
-- a unique index and the audit all group '(1,)' with '(1,)'; only a NULL
-- composite is a NULL key
CREATE TYPE nulls.pair AS (a int, b text);
CREATE TABLE nulls.comp (id int PRIMARY KEY, c nulls.pair);
INSERT INTO nulls.comp VALUES (1, '(1,)'), (2, '(1,)'), (3, '(,)'), (4, '(,)'),
  (5, '(2,x)'), (6, '(2,x)'), (7, NULL), (8, NULL);
SELECT * FROM dedup_audit('comp', '{c}');
SELECT * FROM dedup_groups('comp', '{c}');
SELECT state, duplicate_groups, rows_deleted FROM dedup_table('comp', '{c}', add_unique => true);
SELECT id, c FROM nulls.comp ORDER BY id;

-- a removed row whose composite key with a NULL field is taken under a
-- unique index made since: the rollback's check sees the value (55000)
CREATE TABLE nulls.comp2 (id int PRIMARY KEY, c nulls.pair);
INSERT INTO nulls.comp2 VALUES (1, '(1,)'), (2, '(1,)');
SELECT job_id AS jc2 FROM dedup_table('comp2', '{c}') \gset
CREATE UNIQUE INDEX comp2_c ON nulls.comp2 (c);
DO $$
BEGIN
  PERFORM dedup_rollback(max(job_id)) FROM dedup_jobs WHERE relation = 'nulls.comp2'::regclass;
EXCEPTION WHEN OTHERS THEN
  RAISE NOTICE 'refused: %', SQLSTATE;
END $$;
RESET search_path;
