--
-- rollback_later: dedup_rollback after later writes.  Rollbacks never
-- overwrite what was written since: a row that needs nothing is skipped;
-- otherwise the rollback is refused (55000, a hint naming the archive) and
-- changes nothing.
--
CREATE SCHEMA rollback_later;
SET search_path = rollback_later, public;
-- job ids from 20001 on, whatever the tests before took: NOTICEs name them
SELECT setval('public.dedup_job_job_id_seq', 20000) AS job_ids_after;
\set SHOW_CONTEXT never

-- run q, show its error instead of failing; job ids shown as N
CREATE FUNCTION try(q text, OUT code text, OUT message text, OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  code := '00000';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                          detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
  message := regexp_replace(message, 'job \d+', 'job N', 'g');
  hint := regexp_replace(hint, '(dedup_archive\.\w+?)_\d+(?![0-9])', '\1_N', 'g');
END $$;

-- what a table and its indexes look like, to show that a refusal changed nothing
CREATE FUNCTION snap(t regclass) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text;
BEGIN
  EXECUTE format('SELECT string_agg(r::text, '' '' ORDER BY r::text) FROM %s r', t) INTO s;
  RETURN coalesce(s, '') || ' | ' ||
         coalesce((SELECT string_agg(c.relname, ',' ORDER BY c.relname)
                     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                    WHERE i.indrelid = t), '');
END $$;

--
-- 1. merge: a re-pointed row deleted since, or whose foreign key is NULL
--    again, or that points at its original parent again, needs nothing and
--    is skipped; one re-pointed elsewhere since refuses the rollback
--
CREATE TABLE p (id int PRIMARY KEY, name text);
INSERT INTO p VALUES (1, 'x'), (2, 'x'), (3, 'y');
CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p);
INSERT INTO c VALUES (1, 2), (2, 2), (3, 2), (4, 2), (5, 1);
SELECT job_id AS jm, rows_deleted, refs_repointed FROM dedup_table('p', ARRAY['name'], action => 'merge') \gset
SELECT :rows_deleted AS rows_deleted, :refs_repointed AS refs_repointed;
DELETE FROM c WHERE id = 1;
UPDATE c SET pid = NULL WHERE id = 2;
-- pointed elsewhere since: refused, nothing changed
UPDATE c SET pid = 3 WHERE id = 3;
SELECT snap('p') AS p_before, snap('c') AS c_before \gset
\x on
SELECT * FROM try(format('SELECT dedup_rollback(%s)', :jm));
\x off
SELECT snap('p') = :'p_before' AS p_unchanged, snap('c') = :'c_before' AS c_unchanged;
-- pointed back where the job left it: the rollback goes on.  Row 1 stays
-- deleted, row 2 NULL; rows 3 and 4 point at 2 again, 5 was never moved
UPDATE c SET pid = 1 WHERE id = 3;
SELECT dedup_rollback(:jm) AS restored;
SELECT * FROM p ORDER BY id;
SELECT * FROM c ORDER BY id;

-- its original value back: skipped as well.  (Here the foreign key was
-- dropped since, so a row can point at the removed parent again.)
CREATE TABLE p2 (id int PRIMARY KEY, name text);
INSERT INTO p2 VALUES (1, 'x'), (2, 'x');
CREATE TABLE c2 (id int PRIMARY KEY, pid int REFERENCES p2);
INSERT INTO c2 VALUES (1, 2), (2, 2);
SELECT job_id AS jm2 FROM dedup_table('p2', ARRAY['name'], action => 'merge') \gset
ALTER TABLE c2 DROP CONSTRAINT c2_pid_fkey;
UPDATE c2 SET pid = 2 WHERE id = 1;
SELECT dedup_rollback(:jm2) AS restored;
SELECT * FROM p2 ORDER BY id;
SELECT * FROM c2 ORDER BY id;

--
-- 2. the job's unique index, by identity
--
-- renamed constraint: the rollback drops it under its new name
CREATE TABLE t3 (id int PRIMARY KEY, k text);
INSERT INTO t3 VALUES (1, 'a'), (2, 'a'), (3, 'b');
SELECT job_id AS j3, unique_index FROM dedup_table('t3', '{k}', add_unique => true) \gset
SELECT :'unique_index' AS unique_index;
ALTER TABLE t3 RENAME CONSTRAINT t3_k_key TO t3_k_renamed;
-- dedup_verify and dedup_jobs find it under its new name too (verify said
-- it was missing, and the view showed NULL)
SELECT check_name, ok, detail FROM dedup_verify(:j3) WHERE check_name = 'unique_index';
SELECT unique_index FROM dedup_jobs WHERE job_id = :j3;
SELECT dedup_rollback(:j3) AS restored;
SELECT snap('t3') AS t3;
SELECT count(*) AS constraints FROM pg_constraint WHERE conrelid = 't3'::regclass AND contype = 'u';

-- the job's index dropped by hand, another one under its name: the rollback
-- leaves that one alone
CREATE TABLE t4 (id int PRIMARY KEY, k text, v int);
INSERT INTO t4 VALUES (1, 'a', 1), (2, 'a', 2), (3, 'b', 3);
SELECT job_id AS j4 FROM dedup_table('t4', '{k}', add_unique => true) \gset
ALTER TABLE t4 DROP CONSTRAINT t4_k_key;
CREATE INDEX t4_k_key ON t4 (v);
SELECT dedup_rollback(:j4) AS restored;
SELECT snap('t4') AS t4;

-- the job's index dropped by hand, a unique index of the user's under its
-- name that the restored duplicates would violate: refused before anything
-- changes, the user's index kept
CREATE TABLE t5 (id int PRIMARY KEY, k text);
INSERT INTO t5 VALUES (1, 'a'), (2, 'a'), (3, 'a'), (4, 'b');
SELECT job_id AS j5 FROM dedup_table('t5', '{k}', add_unique => true) \gset
ALTER TABLE t5 DROP CONSTRAINT t5_k_key;
CREATE UNIQUE INDEX t5_k_key ON t5 (k);
SELECT snap('t5') AS t5_before \gset
\x on
SELECT * FROM try(format('SELECT dedup_rollback(%s)', :j5));
\x off
SELECT snap('t5') = :'t5_before' AS t5_unchanged;
SELECT rolled_back_by FROM dedup_jobs WHERE job_id = :j5;
-- the user's index gone, the rollback goes on
DROP INDEX t5_k_key;
SELECT dedup_rollback(:j5) AS restored;
SELECT snap('t5') AS t5;

-- REINDEX CONCURRENTLY gives the job's index a new identity under its name
-- (and keeps its constraint): it is still the job's, and the rollback drops it
CREATE TABLE t5r (id int PRIMARY KEY, k text);
INSERT INTO t5r VALUES (1, 'a'), (2, 'a'), (3, 'b');
SELECT job_id AS j5r FROM dedup_table('t5r', '{k}', add_unique => true) \gset
REINDEX INDEX CONCURRENTLY t5r_k_key;
SELECT dedup_rollback(:j5r) AS restored;
SELECT snap('t5r') AS t5r;
SELECT count(*) AS unique_constraints FROM pg_constraint WHERE conrelid = 't5r'::regclass AND contype = 'u';

-- the job's index renamed, its old name taken by another unique index
-- (one the restored rows do not violate): the job's is dropped, the other kept
CREATE TABLE t6 (id int PRIMARY KEY, k text, v int);
INSERT INTO t6 VALUES (1, 'a', 1), (2, 'a', 2), (3, 'b', 3);
SELECT job_id AS j6 FROM dedup_table('t6', '{k}', filter => 'v > 0', add_unique => true) \gset
ALTER INDEX t6_k_idx RENAME TO t6_k_job;
CREATE UNIQUE INDEX t6_k_idx ON t6 (v);
SELECT dedup_rollback(:j6) AS restored;
SELECT snap('t6') AS t6;

-- a background job's index, noted when it became valid: dropped under its
-- new name
CREATE TABLE t9 (id int PRIMARY KEY, k text);
INSERT INTO t9 VALUES (1, 'a'), (2, 'a'), (3, 'b'), (4, 'b');
SELECT job_id AS j9 FROM dedup_table('t9', '{k}', add_unique => true, background => true, batch_size => 1) \gset
SELECT dedup_wait(:j9, '60s') AS state;
SELECT unique_index_oid = 't9_k_key'::regclass AS noted FROM dedup_job WHERE job_id = :j9;
ALTER TABLE t9 RENAME CONSTRAINT t9_k_key TO t9_k_renamed;
CREATE INDEX t9_k_key ON t9 (id);
SELECT dedup_rollback(:j9) AS restored;
SELECT snap('t9') AS t9;

-- a job written before its index was noted: found by name, as then
CREATE TABLE t10 (id int PRIMARY KEY, k text);
INSERT INTO t10 VALUES (1, 'a'), (2, 'a');
SELECT job_id AS j10 FROM dedup_table('t10', '{k}', add_unique => true) \gset
UPDATE dedup_job SET unique_index_oid = NULL WHERE job_id = :j10;
SELECT dedup_rollback(:j10) AS restored;
SELECT snap('t10') AS t10;

--
-- 3. a removed row's primary key used again: refused before anything
--    changes, saying how many keys are taken
--
CREATE TABLE t7 (id int PRIMARY KEY, k text);
INSERT INTO t7 VALUES (1, 'a'), (2, 'a'), (3, 'a'), (4, 'b'), (5, 'b');
SELECT job_id AS j7, rows_deleted FROM dedup_table('t7', '{k}', add_unique => true) \gset
INSERT INTO t7 VALUES (2, 'new'), (5, 'newer');
SELECT snap('t7') AS t7_before \gset
\x on
SELECT * FROM try(format('SELECT dedup_rollback(%s)', :j7));
\x off
SELECT snap('t7') = :'t7_before' AS t7_unchanged;
-- the keys free again: the rollback goes on
DELETE FROM t7 WHERE id IN (2, 5);
SELECT dedup_rollback(:j7) AS restored;
SELECT snap('t7') AS t7;

-- a merge's losers too
CREATE TABLE p8 (id int PRIMARY KEY, name text);
INSERT INTO p8 VALUES (1, 'x'), (2, 'x');
CREATE TABLE c8 (id int PRIMARY KEY, pid int REFERENCES p8);
INSERT INTO c8 VALUES (1, 2);
SELECT job_id AS j8 FROM dedup_table('p8', ARRAY['name'], action => 'merge') \gset
INSERT INTO p8 VALUES (2, 'y');
SELECT snap('p8') AS p8_before, snap('c8') AS c8_before \gset
\x on
SELECT * FROM try(format('SELECT dedup_rollback(%s)', :j8));
\x off
SELECT snap('p8') = :'p8_before' AS p8_unchanged, snap('c8') = :'c8_before' AS c8_unchanged;

-- a column dropped, or given another type, since the job: the archive's rows
-- cannot be put back, so the rollback is refused (55000) until the table has
-- that column again as it was
CREATE TABLE dropc (id int PRIMARY KEY, k int, v text);
INSERT INTO dropc SELECT g, g % 2, 'v' || g FROM generate_series(1, 6) g;
SELECT job_id AS jdc FROM dedup_table('dropc', '{k}') \gset
ALTER TABLE dropc DROP COLUMN v;
SELECT code, message FROM try(format('SELECT dedup_rollback(%s)', :jdc));
ALTER TABLE dropc ADD COLUMN v int;
SELECT code, message FROM try(format('SELECT dedup_rollback(%s)', :jdc));
ALTER TABLE dropc ALTER COLUMN v TYPE text;
SELECT dedup_rollback(:jdc) AS restored;
SELECT * FROM dropc ORDER BY id;

-- columns widened since (int to bigint, varchar(5) to varchar(10)) take the
-- archived values by assignment: the rollback goes through
CREATE TABLE widen (id int PRIMARY KEY, k int, v varchar(5));
INSERT INTO widen SELECT g, g % 2, 'v' || g FROM generate_series(1, 4) g;
SELECT job_id AS jw FROM dedup_table('widen', '{k}') \gset
ALTER TABLE widen ALTER COLUMN id TYPE bigint, ALTER COLUMN v TYPE varchar(10);
SELECT dedup_rollback(:jw) AS restored;
SELECT * FROM widen ORDER BY id;
-- a partial unique index of the job's (a filter) dropped, and a user's
-- unique index made under its name: not the job's, kept; the restored
-- duplicates would violate it, so the rollback is refused
CREATE TABLE part (id int PRIMARY KEY, k text, gone boolean NOT NULL DEFAULT false);
INSERT INTO part VALUES (1, 'a', false), (2, 'a', false), (3, 'b', false);
SELECT job_id AS jpart, unique_index AS part_index
  FROM dedup_table('part', '{k}', filter => 'NOT gone', add_unique => true) \gset
DROP INDEX :part_index;
CREATE UNIQUE INDEX part_k_idx ON part (k) WHERE id > 0;
SELECT code FROM try(format('SELECT dedup_rollback(%s)', :jpart));
SELECT count(*) AS user_index_kept FROM pg_class WHERE relname = 'part_k_idx';

-- a BEFORE trigger that skips restored rows (a delete's rows put back, a
-- rename's keys set back; it lets the rename's new keys through): the
-- archive would be their last copy, so the
-- rollback is refused (09000) and the archive kept; a rule on INSERT is
-- refused before anything runs (0A000)
CREATE TABLE skipped (id int PRIMARY KEY, k text, v text);
INSERT INTO skipped SELECT g, 'k' || g % 3, 'v' || g FROM generate_series(1, 9) g;
SELECT job_id AS jskip FROM dedup_table('skipped', '{k}') \gset
CREATE FUNCTION skip_high() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN IF NEW.id > 6 AND strpos(NEW.k, '-') = 0 THEN RETURN NULL; END IF; RETURN NEW; END$$;
CREATE TRIGGER skip_high BEFORE INSERT OR UPDATE ON skipped FOR EACH ROW EXECUTE FUNCTION skip_high();
SELECT code, message FROM try(format('SELECT dedup_rollback(%s)', :jskip));
SELECT count(*) AS rows_now, (SELECT count(*) FROM dedup_jobs WHERE job_id = :jskip AND rolled_back_by IS NULL) AS not_rolled_back
  FROM skipped;
CREATE RULE skip_all AS ON INSERT TO skipped DO INSTEAD NOTHING;
SELECT code, message FROM try(format('SELECT dedup_rollback(%s)', :jskip));
DROP RULE skip_all ON skipped;
ALTER TABLE skipped DISABLE TRIGGER skip_high;
SELECT dedup_rollback(:jskip) AS restored;
ALTER TABLE skipped ENABLE TRIGGER skip_high;
SELECT job_id AS jskipr FROM dedup_table('skipped', '{k}', action => 'rename') \gset
SELECT code, message FROM try(format('SELECT dedup_rollback(%s)', :jskipr));
SELECT id, k FROM skipped WHERE id > 6 ORDER BY id;

-- a CHECK constraint added since (NOT VALID: the survivors were not
-- checked) that the removed rows break: the rollback stops on it with a hint
-- and changes nothing
CREATE TABLE checked (id int PRIMARY KEY, k text, v int);
INSERT INTO checked VALUES (1, 'a', 1), (2, 'a', -1);
SELECT job_id AS jchk FROM dedup_table('checked', '{k}') \gset
ALTER TABLE checked ADD CONSTRAINT v_positive CHECK (v > 0) NOT VALID;
SELECT code, message, regexp_replace(hint, 'job [0-9]+', 'job N') AS hint
  FROM try(format('SELECT dedup_rollback(%s)', :jchk));
SELECT * FROM checked ORDER BY id;

-- a rename's rollback only updates: a rule on the table's DELETE does not
-- stand in its way (only rules on what the rollback runs do)
CREATE TABLE ruled (id int PRIMARY KEY, k text);
INSERT INTO ruled VALUES (1, 'a'), (2, 'a');
SELECT job_id AS jruled FROM dedup_table('ruled', '{k}', action => 'rename') \gset
CREATE RULE ruled_delete AS ON DELETE TO ruled DO ALSO NOTIFY ruled;
-- nor one on its INSERT: a rename removed no row, there is none to insert
CREATE RULE ruled_insert AS ON INSERT TO ruled DO ALSO NOTIFY ruled;
SELECT dedup_rollback(:jruled) AS restored;
SELECT * FROM ruled ORDER BY id;

-- a BEFORE UPDATE trigger that returns OLD makes the rollback's UPDATE
-- change nothing: refused (09000), the renamed values and the archive kept
CREATE TABLE frozen (id int PRIMARY KEY, txn text);
INSERT INTO frozen VALUES (1, 'A'), (2, 'A');
SELECT job_id AS jfrozen FROM dedup_table('frozen', '{txn}', action => 'rename') \gset
CREATE FUNCTION keep_old() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN OLD; END$$;
CREATE TRIGGER keep_old BEFORE UPDATE ON frozen FOR EACH ROW EXECUTE FUNCTION keep_old();
SELECT code, message FROM try(format('SELECT dedup_rollback(%s)', :jfrozen));
SELECT * FROM frozen ORDER BY id;
-- a later dedup removed rows an earlier backfill linked: the backfill's
-- rollback alone would leave them out, the dedup's would bring them back
-- linked (55000: roll back the later job first)
CREATE TABLE kw (id int PRIMARY KEY, name text UNIQUE);
INSERT INTO kw VALUES (1, 'a'), (2, 'b');
CREATE TABLE item (id int PRIMARY KEY, name text, kw_id int);
INSERT INTO item VALUES (1, 'a', NULL), (2, 'a', NULL), (3, 'b', NULL), (4, 'b', NULL);
SELECT job_id AS jlink FROM backfill_fk('item', 'kw_id', 'kw', '{name}') \gset
SELECT job_id AS jlater FROM dedup_table('item', '{name}') \gset
SELECT code, regexp_replace(message, 'job [0-9]+', 'job N', 'g') AS message
  FROM try(format('SELECT dedup_rollback(%s)', :jlink));
SELECT dedup_rollback(:jlater) AS restored_later;
SELECT dedup_rollback(:jlink) AS restored_link;
SELECT * FROM item ORDER BY id;

-- a renamed row of a partition moved to another one since (an update of
-- the partition key) looks deleted: the rollback leaves it as it is, and
-- says so
CREATE TABLE pt (id int, r int, k text, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
CREATE TABLE pt1 PARTITION OF pt FOR VALUES IN (1);
CREATE TABLE pt2 PARTITION OF pt FOR VALUES IN (2);
INSERT INTO pt VALUES (1, 1, 'a'), (2, 1, 'a'), (3, 1, 'a');
SELECT job_id AS jpt FROM dedup_table('pt1', '{k}', action => 'rename') \gset
UPDATE pt SET r = 2 WHERE id = 2;
SELECT dedup_rollback(:jpt) AS restored;
SELECT tableoid::regclass AS part, id, k FROM pt ORDER BY id;

\set SHOW_CONTEXT errors
RESET search_path;
DROP SCHEMA rollback_later CASCADE;
