--
-- background: dedup_table(..., background => true) queues a job that a
-- background worker runs after the submitting transaction commits, in
-- committed batches, as the submitting role.  Everything here is
-- deterministic: dedup_wait waits for the end of a job; a job submitted and
-- paused in the same transaction never starts until dedup_resume; a job that
-- must stop in the middle is stopped by a trigger of its own table that asks
-- for it during the first batch.  No job id, pid, oid or timestamp is shown.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dedup_ext;
DROP ROLE IF EXISTS regress_bg_owner;
DROP ROLE IF EXISTS regress_bg_other;
DROP ROLE IF EXISTS regress_bg_stats;
RESET client_min_messages;
\set VERBOSITY terse
-- a job that never ends fails the test instead of hanging it
SET statement_timeout = '60s';
CREATE ROLE regress_bg_owner;
CREATE ROLE regress_bg_other;
CREATE ROLE regress_bg_stats IN ROLE pg_read_all_stats;

-- a helper owned by the superuser: run q, show SQLSTATE and message instead of
-- failing; numbers in messages (job ids, archive names) are shown as N
CREATE SCHEMA bg_util;
GRANT USAGE ON SCHEMA bg_util TO PUBLIC;
CREATE FUNCTION bg_util.try(q text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  code := 'OK';
EXCEPTION WHEN OTHERS THEN
  code := SQLSTATE;
  message := regexp_replace(SQLERRM, '[0-9]+', 'N', 'g');
END $$;

CREATE SCHEMA bg;
SET search_path = bg, public;

-- 30 rows, 6 emails of 5 rows each: 6 groups, 24 rows to remove
CREATE TABLE bg.acct (id int PRIMARY KEY, email text NOT NULL, deleted boolean NOT NULL DEFAULT false);
INSERT INTO bg.acct SELECT g, 'u' || g % 6 || '@example.com', g % 7 = 0 FROM generate_series(1, 30) g;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) AS acct_md5 FROM bg.acct a \gset
SELECT total_rows, duplicate_groups, duplicate_rows FROM dedup_audit('acct', '{email}');
SELECT count(*) AS jobs_before FROM dedup_jobs \gset
SELECT count(*) AS archives_before FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace \gset

--
-- a submission returns one row at once: queued, strategy delete, no counts
-- yet, the archive table already named.  Rolled back, it leaves no job row and
-- no archive, and never runs.  dedup_wait is refused in the submitting
-- transaction (the job cannot start before it commits).
--
BEGIN;
SELECT job_id AS jid_rb, archive_table AS arch_rb
  FROM dedup_table('acct', '{email}', background => true, batch_size => 4) \gset
SELECT :jid_rb IS NOT NULL AS has_job_id, state, kind, background, phase, rows_done, batches_done,
       archive_table = :'arch_rb'::regclass AS same_archive
  FROM dedup_jobs WHERE job_id = :jid_rb;
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s)', :jid_rb));
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s, %L)', :jid_rb, '1s'));
ROLLBACK;
SELECT count(*) AS job_rows FROM dedup_jobs WHERE job_id = :jid_rb;
SELECT to_regclass(:'arch_rb') AS archive;
SELECT count(*) - :jobs_before AS new_jobs FROM dedup_jobs;
SELECT count(*) - :archives_before AS new_archives
  FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS acct_unchanged FROM bg.acct a;
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s)', :jid_rb));

--
-- committed: the worker runs the job in batches of 4; dedup_wait returns
-- 'done'; the counts are in dedup_jobs; no duplicate is left; dedup_verify is
-- all ok; the archive holds the removed rows; dedup_rollback restores exactly
--
CREATE TEMP TABLE r_sub AS
SELECT * FROM dedup_table('acct', '{email}', background => true, batch_size => 4);
SELECT job_id AS jid, archive_table AS arch FROM r_sub \gset
SELECT job_id IS NOT NULL AS has_job_id, state, strategy, duplicate_groups, rows_deleted,
       rows_renamed, refs_repointed, archive_table IS NOT NULL AS has_archive, unique_index
  FROM r_sub;
SELECT dedup_wait(:jid);
SELECT kind, relation, state, submitted_by, background, strategy, duplicate_groups, rows_deleted,
       rows_renamed, rows_changed, rows_done, rows_total, batches_done, passes, phase,
       worker_pid, error, archive_table = :'arch'::regclass AS same_archive, unique_index,
       started_at >= submitted_at AND finished_at >= started_at AS times_in_order
  FROM dedup_jobs WHERE job_id = :jid;
SELECT id, email FROM bg.acct ORDER BY id;
SELECT total_rows, duplicate_groups, duplicate_rows FROM dedup_audit('acct', '{email}');
SELECT check_name, ok FROM dedup_verify(:jid) ORDER BY check_name;
SELECT count(*) AS archived, count(DISTINCT dedup_job_id) AS jobs FROM :arch;
-- a finished job is not in dedup_progress; its work table is gone
SELECT count(*) AS in_progress FROM dedup_progress WHERE job_id = :jid;
SELECT count(*) AS work_tables FROM pg_class
 WHERE relnamespace = 'dedup_archive'::regnamespace AND relkind = 'r' AND relname LIKE '%\_work';
-- control functions on a finished job return false and change nothing
SELECT dedup_pause(:jid) AS pause, dedup_resume(:jid) AS resume, dedup_cancel(:jid) AS cancel;
SELECT state FROM dedup_jobs WHERE job_id = :jid;
SELECT dedup_rollback(:jid) AS restored;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM bg.acct a;
SELECT kind, state FROM dedup_jobs WHERE target_job = :jid;

--
-- the settings are captured at submit time: dedup_ext.batch_size when
-- batch_size is NULL (5 rows: 24 losers in 5 batches), lock_timeout and
-- batch_delay; changing them before COMMIT changes nothing
--
BEGIN;
SET LOCAL dedup_ext.batch_size = 5;
SET LOCAL dedup_ext.lock_timeout = 250;
SET LOCAL dedup_ext.batch_delay = 1;
SELECT job_id AS jid_guc FROM dedup_table('acct', '{email}', background => true) \gset
SET LOCAL dedup_ext.batch_size = 1;
SET LOCAL dedup_ext.lock_timeout = 2;
SET LOCAL dedup_ext.batch_delay = 3;
COMMIT;
SELECT dedup_wait(:jid_guc);
SELECT state, rows_deleted, batches_done, params->>'batch_size' AS batch_size_arg,
       params->>'lock_timeout' AS lock_timeout, params->>'batch_delay' AS batch_delay
  FROM dedup_jobs WHERE job_id = :jid_guc;
SELECT dedup_rollback(:jid_guc) AS restored;

--
-- paused before COMMIT: the job never starts.  dedup_wait returns 'paused'
-- at once (with or without a timeout); it shows in dedup_progress; it cannot
-- be rolled back or verified as done.  Resumed, it runs to the end.
--
BEGIN;
SELECT job_id AS jid_p FROM dedup_table('acct', '{email}', background => true, batch_size => 4) \gset
SELECT dedup_pause(:jid_p) AS paused;
SELECT state FROM dedup_jobs WHERE job_id = :jid_p;
COMMIT;
SELECT dedup_wait(:jid_p);
SELECT dedup_wait(:jid_p, '10 ms');
SELECT dedup_wait(:jid_p, '0');
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s, %L)', :jid_p, '-1 s'));
SELECT state, phase, rows_done, batches_done, worker_pid FROM dedup_jobs WHERE job_id = :jid_p;
SELECT kind, relation, phase, state, rows_done, batches_done FROM dedup_progress WHERE job_id = :jid_p;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS acct_unchanged FROM bg.acct a;
-- pausing a paused job: false; rolling back an unfinished job: refused
SELECT dedup_pause(:jid_p) AS pause_again;
SELECT * FROM bg_util.try(format('SELECT dedup_rollback(%s)', :jid_p));
SELECT check_name, ok, detail FROM dedup_verify(:jid_p);
SELECT dedup_resume(:jid_p) AS resumed;
SELECT dedup_wait(:jid_p);
SELECT state, rows_deleted, batches_done FROM dedup_jobs WHERE job_id = :jid_p;
SELECT total_rows, duplicate_rows FROM dedup_audit('acct', '{email}');
SELECT count(*) AS in_progress FROM dedup_progress WHERE job_id = :jid_p;
SELECT dedup_rollback(:jid_p) AS restored;

--
-- cancelled before it ran: a paused job, and a queued one in its submitting
-- transaction, are cancelled at once; the table is unchanged, no archive
-- (its empty one is dropped) nor work table is left; control functions then
-- return false
--
BEGIN;
SELECT job_id AS jid_c FROM dedup_table('acct', '{email}', background => true, batch_size => 4) \gset
SELECT dedup_pause(:jid_c) AS paused;
COMMIT;
SELECT dedup_cancel(:jid_c) AS cancelled;
SELECT state FROM dedup_jobs WHERE job_id = :jid_c;
SELECT dedup_wait(:jid_c);
SELECT dedup_pause(:jid_c) AS pause, dedup_resume(:jid_c) AS resume, dedup_cancel(:jid_c) AS cancel;
SELECT state, rows_deleted, archive_table IS NULL AS no_archive FROM dedup_jobs WHERE job_id = :jid_c;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS acct_unchanged FROM bg.acct a;
BEGIN;
SELECT job_id AS jid_c2, archive_table AS arch_c2
  FROM dedup_table('acct', '{email}', background => true, batch_size => 4) \gset
SELECT dedup_cancel(:jid_c2) AS cancelled;
COMMIT;
SELECT dedup_wait(:jid_c2);
SELECT state, rows_deleted FROM dedup_jobs WHERE job_id = :jid_c2;
SELECT to_regclass(:'arch_c2') AS archive_left;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS acct_unchanged FROM bg.acct a;
-- a cancelled job is finished: rolling it back restores nothing
SELECT dedup_rollback(:jid_c2) AS restored;
SELECT count(*) AS work_tables FROM pg_class
 WHERE relnamespace = 'dedup_archive'::regnamespace AND relkind = 'r' AND relname LIKE '%\_work';

--
-- a running job stops after its current batch.  A trigger on the table asks
-- for it (dedup_pause or dedup_cancel of the job, called in the worker, as
-- the submitter) while the first batch of 4 deletes: the batch commits, then
-- the job stops.  Paused: 4 rows deleted and archived, resumed to the end.
-- Cancelled: the committed batch stays done and archived, and
-- dedup_rollback undoes it exactly.
--
CREATE TABLE bg.stop_request (job_id bigint, what text);
CREATE FUNCTION bg.stop_trigger() RETURNS trigger LANGUAGE plpgsql
  SET search_path = public, pg_temp AS $$
BEGIN
  PERFORM CASE s.what WHEN 'pause' THEN dedup_pause(s.job_id) ELSE dedup_cancel(s.job_id) END
     FROM bg.stop_request s;
  RETURN OLD;
END $$;
CREATE TRIGGER acct_stop BEFORE DELETE ON bg.acct FOR EACH ROW EXECUTE FUNCTION bg.stop_trigger();

BEGIN;
SELECT job_id AS jid_s, archive_table AS arch_s
  FROM dedup_table('acct', '{email}', background => true, batch_size => 4) \gset
INSERT INTO bg.stop_request VALUES (:jid_s, 'pause');
COMMIT;
SELECT dedup_wait(:jid_s);
SELECT state, phase, rows_total, rows_done, rows_deleted, batches_done, passes
  FROM dedup_jobs WHERE job_id = :jid_s;
SELECT phase, state, rows_total, rows_done, batches_done, percent,
       rows_per_second IS NULL AS no_speed, eta IS NULL AS no_eta
  FROM dedup_progress WHERE job_id = :jid_s;
SELECT (SELECT count(*) FROM bg.acct) AS table_rows, (SELECT count(*) FROM :arch_s) AS archived;
DELETE FROM bg.stop_request;
SELECT dedup_resume(:jid_s) AS resumed;
SELECT dedup_wait(:jid_s);
SELECT state, phase, rows_total, rows_done, rows_deleted, batches_done, passes
  FROM dedup_jobs WHERE job_id = :jid_s;
SELECT check_name, ok FROM dedup_verify(:jid_s) ORDER BY check_name;
SELECT dedup_rollback(:jid_s) AS restored;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM bg.acct a;

BEGIN;
SELECT job_id AS jid_x, archive_table AS arch_x
  FROM dedup_table('acct', '{email}', background => true, batch_size => 4) \gset
INSERT INTO bg.stop_request VALUES (:jid_x, 'cancel');
COMMIT;
SELECT dedup_wait(:jid_x);
SELECT state, rows_deleted, batches_done, worker_pid FROM dedup_jobs WHERE job_id = :jid_x;
SELECT (SELECT count(*) FROM bg.acct) AS table_rows, (SELECT count(*) FROM :arch_x) AS archived;
SELECT total_rows, duplicate_rows FROM dedup_audit('acct', '{email}');
SELECT count(*) AS work_tables FROM pg_class
 WHERE relnamespace = 'dedup_archive'::regnamespace AND relkind = 'r' AND relname LIKE '%\_work';
SELECT dedup_cancel(:jid_x) AS cancel_again;
DELETE FROM bg.stop_request;
SELECT dedup_rollback(:jid_x) AS restored;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM bg.acct a;
SELECT to_regclass(:'arch_x') AS archive_left;
DROP TRIGGER acct_stop ON bg.acct;

--
-- rename in the background: the survivor keeps its key, the others get
-- key || '-' || id; dedup_rollback sets them back
--
CREATE TABLE bg.tags (id int PRIMARY KEY, tag text NOT NULL);
INSERT INTO bg.tags SELECT g, 't' || g % 3 FROM generate_series(1, 9) g;
INSERT INTO bg.tags VALUES (10, 't1-4');   -- taken: the suffix of row 4 is extended
SELECT job_id AS jid_rn FROM dedup_table('tags', '{tag}', action => 'rename', background => true,
                                         batch_size => 2) \gset
SELECT dedup_wait(:jid_rn);
SELECT state, rows_renamed, rows_deleted, duplicate_groups FROM dedup_jobs WHERE job_id = :jid_rn;
SELECT id, tag FROM bg.tags ORDER BY id;
SELECT check_name, ok FROM dedup_verify(:jid_rn) ORDER BY check_name;
SELECT dedup_rollback(:jid_rn) AS restored;
SELECT id, tag FROM bg.tags ORDER BY id;

--
-- merge in the background, in batches of 2: each batch re-points the rows
-- of every referencing table from its losers to their survivors, removing
-- the rows that would collide under a unique index (kw_tag's 'a' labels),
-- then removes the losers.  The referencing tables' archives are listed in
-- ref_archives; dedup_verify is ok; dedup_rollback restores every table
--
CREATE TABLE bg.kw (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO bg.kw SELECT g, 'k' || g % 3 FROM generate_series(1, 9) g;
CREATE TABLE bg.kw_tag (id int PRIMARY KEY, kw_id int NOT NULL REFERENCES bg.kw,
                        label text NOT NULL, UNIQUE (kw_id, label));
INSERT INTO bg.kw_tag SELECT g, g, 'a' FROM generate_series(1, 9) g;
INSERT INTO bg.kw_tag SELECT 10 + g, g, 'b' || g FROM generate_series(1, 9) g;
CREATE TABLE bg.kw_note (id int PRIMARY KEY, kw_id int REFERENCES bg.kw);
INSERT INTO bg.kw_note SELECT g, g FROM generate_series(4, 9) g;
CREATE TEMP TABLE kw_before AS
  SELECT (SELECT md5(string_agg(k::text, ',' ORDER BY id)) FROM bg.kw k) AS kw,
         (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM bg.kw_tag t) AS tag,
         (SELECT md5(string_agg(n::text, ',' ORDER BY id)) FROM bg.kw_note n) AS note;
SELECT job_id AS jid_m, state FROM dedup_table('kw', '{name}', action => 'merge', background => true,
                                               batch_size => 2) \gset
SELECT :'state' AS submitted, dedup_wait(:jid_m);
SELECT state, rows_deleted, refs_repointed, refs_removed, batches_done, error
  FROM dedup_jobs WHERE job_id = :jid_m;
SELECT e->>'table' AS ref_table, regexp_replace(e->>'archive', '[0-9]+', 'N') AS ref_archive
  FROM dedup_jobs j, jsonb_array_elements(j.ref_archives) e WHERE j.job_id = :jid_m ORDER BY 1;
SELECT id, name FROM bg.kw ORDER BY id;
SELECT id, kw_id, label FROM bg.kw_tag ORDER BY id;
SELECT id, kw_id FROM bg.kw_note ORDER BY id;
SELECT check_name, ok FROM dedup_verify(:jid_m) ORDER BY check_name;
SELECT dedup_rollback(:jid_m) AS restored;
SELECT (SELECT md5(string_agg(k::text, ',' ORDER BY id)) FROM bg.kw k) = b.kw AS kw_exact,
       (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM bg.kw_tag t) = b.tag AS tag_exact,
       (SELECT md5(string_agg(n::text, ',' ORDER BY id)) FROM bg.kw_note n) = b.note AS note_exact
  FROM kw_before b;
-- the same merge in the foreground: the same rows changed (the losers, and
-- the referencing rows re-pointed or removed)
SELECT job_id AS jid_mf FROM dedup_table('kw', '{name}', action => 'merge') \gset
SELECT b.rows_changed AS background, f.rows_changed AS foreground
  FROM dedup_jobs b, dedup_jobs f WHERE b.job_id = :jid_m AND f.job_id = :jid_mf;
SELECT dedup_rollback(:jid_mf) AS restored;

-- float keys are written exactly by the worker too, whatever the database
-- sets extra_float_digits to (0 rounds 0.1 + 0.2 to "0.3"): the re-pointed
-- references it records are the values it wrote, so the rollback finds them
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET extra_float_digits = 0', current_database()); END $$;
-- a worker still running takes queued jobs with the settings it started
-- with: the job must start a new one
DO $$
BEGIN
  FOR i IN 1 .. 3000 LOOP
    IF NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'
                                                  AND datname = current_database()) THEN
      RETURN;
    END IF;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RAISE EXCEPTION 'a dedup_ext worker is still running after 30 s';
END $$;
CREATE TABLE bg.fl (id float8 PRIMARY KEY, k text NOT NULL);
INSERT INTO bg.fl VALUES (0.3, 'a'), (0.1::float8 + 0.2::float8, 'a'), (0.7, 'b'), (0.7000000000000001, 'b');
CREATE TABLE bg.fl_ref (id int PRIMARY KEY, fl_id float8 REFERENCES bg.fl);
INSERT INTO bg.fl_ref VALUES (1, 0.3), (2, 0.1::float8 + 0.2::float8), (3, 0.7), (4, 0.7000000000000001);
SELECT job_id AS jid_fl FROM dedup_table('fl', '{k}', keep => 'id DESC', action => 'merge',
                                         background => true) \gset
SELECT dedup_wait(:jid_fl);
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET extra_float_digits', current_database()); END $$;
SELECT state, rows_deleted, refs_repointed FROM dedup_jobs WHERE job_id = :jid_fl;
SELECT id::text, fl_id::text FROM bg.fl_ref ORDER BY id;
SELECT dedup_rollback(:jid_fl) AS restored;
SELECT id::text, fl_id::text FROM bg.fl_ref ORDER BY id;

--
-- add_unique in the background: a valid unique index built concurrently,
-- attached as a table constraint, so ON CONFLICT (email) works; rollback
-- drops it and restores the rows
--
SELECT job_id AS jid_u FROM dedup_table('acct', '{email}', add_unique => true, background => true,
                                        batch_size => 10) \gset
SELECT dedup_wait(:jid_u);
SELECT state, rows_deleted, unique_index FROM dedup_jobs WHERE job_id = :jid_u;
SELECT c.relname, i.indisunique, i.indisvalid, pg_get_indexdef(i.indexrelid) AS def
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'bg.acct'::regclass ORDER BY c.relname;
SELECT conname, contype FROM pg_constraint WHERE conrelid = 'bg.acct'::regclass ORDER BY conname;
SELECT check_name, ok FROM dedup_verify(:jid_u) ORDER BY check_name;
INSERT INTO bg.acct VALUES (100, 'u1@example.com') ON CONFLICT (email) DO UPDATE SET deleted = true
RETURNING id, email, deleted;
UPDATE bg.acct SET deleted = false WHERE id = 1;
SELECT dedup_rollback(:jid_u) AS restored;
SELECT conname, contype FROM pg_constraint WHERE conrelid = 'bg.acct'::regclass ORDER BY conname;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM bg.acct a;

--
-- filter + add_unique: only rows where NOT deleted take part; the unique
-- index is partial (no constraint can be); deleted rows stay
--
SELECT job_id AS jid_f FROM dedup_table('acct', '{email}', filter => 'NOT deleted', add_unique => true,
                                        background => true, batch_size => 3) \gset
SELECT dedup_wait(:jid_f);
SELECT state, rows_deleted, duplicate_groups, unique_index FROM dedup_jobs WHERE job_id = :jid_f;
SELECT id, email, deleted FROM bg.acct ORDER BY id;
SELECT c.relname, i.indisunique, i.indisvalid, pg_get_indexdef(i.indexrelid) AS def
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'bg.acct'::regclass ORDER BY c.relname;
SELECT conname, contype FROM pg_constraint WHERE conrelid = 'bg.acct'::regclass ORDER BY conname;
SELECT check_name, ok FROM dedup_verify(:jid_f) ORDER BY check_name;
SELECT dedup_rollback(:jid_f) AS restored;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM bg.acct a;

--
-- nulls_distinct => false with add_unique: NULLs are one group, the index
-- is UNIQUE NULLS NOT DISTINCT
--
CREATE TABLE bg.nul (id int PRIMARY KEY, code text);
INSERT INTO bg.nul VALUES (1, NULL), (2, NULL), (3, 'x'), (4, 'x'), (5, 'y');
SELECT job_id AS jid_n FROM dedup_table('nul', '{code}', nulls_distinct => false, add_unique => true,
                                        background => true) \gset
SELECT dedup_wait(:jid_n);
SELECT state, rows_deleted FROM dedup_jobs WHERE job_id = :jid_n;
SELECT id, code FROM bg.nul ORDER BY id;
SELECT pg_get_indexdef(i.indexrelid) AS def
  FROM pg_index i WHERE i.indrelid = 'bg.nul'::regclass AND NOT i.indisprimary;
SELECT dedup_rollback(:jid_n) AS restored;

--
-- archive => false: no archive table; the job cannot be rolled back
--
CREATE TABLE bg.noarch (id int PRIMARY KEY, k int);
INSERT INTO bg.noarch SELECT g, g % 2 FROM generate_series(1, 6) g;
SELECT job_id AS jid_na, archive_table IS NULL AS no_archive
  FROM dedup_table('noarch', '{k}', archive => false, background => true) \gset
SELECT :'no_archive' AS no_archive, dedup_wait(:jid_na);
SELECT state, rows_deleted, archive_table FROM dedup_jobs WHERE job_id = :jid_na;
SELECT id, k FROM bg.noarch ORDER BY id;
SELECT * FROM bg_util.try(format('SELECT dedup_rollback(%s)', :jid_na));

--
-- dry_run => true with background => true: the dry run answers at once, in
-- the foreground; no job, nothing changed
--
SELECT count(*) AS jobs_now FROM dedup_jobs \gset
SELECT job_id, state, duplicate_groups, rows_deleted, archive_table
  FROM dedup_table('acct', '{email}', dry_run => true, background => true);
SELECT count(*) - :jobs_now AS new_jobs FROM dedup_jobs;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS acct_unchanged FROM bg.acct a;

--
-- refusals, each changing nothing: merge needs a primary key, refused at
-- submit time (22023); strategy 'rewrite' cannot run in the background
-- (0A000); batch_size must be positive (22023); a NULL job_id
-- is named (22023); an unknown job does not exist (42704); dedup_wait in a
-- REPEATABLE READ or SERIALIZABLE transaction (0A000)
--
CREATE TABLE bg.nopk (id int UNIQUE, name text);
CREATE TABLE bg.nopk_ref (id int PRIMARY KEY, pid int REFERENCES bg.nopk (id));
INSERT INTO bg.nopk VALUES (1, 'x'), (2, 'x');
SELECT count(*) AS jobs_now FROM dedup_jobs \gset
SELECT count(*) AS archives_now FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace \gset
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.nopk', '{name}', action => 'merge', background => true)$$);
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.acct', '{email}', strategy => 'rewrite', background => true)$$);
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.acct', '{email}', background => true, batch_size => 0)$$);
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.acct', '{email}', background => true, batch_size => -1)$$);
SELECT * FROM bg_util.try($$SELECT dedup_wait(NULL)$$);
SELECT * FROM bg_util.try($$SELECT dedup_pause(NULL)$$);
SELECT * FROM bg_util.try($$SELECT dedup_resume(NULL)$$);
SELECT * FROM bg_util.try($$SELECT dedup_cancel(NULL)$$);
SELECT * FROM bg_util.try($$SELECT dedup_wait(-1)$$);
SELECT * FROM bg_util.try($$SELECT dedup_pause(-1)$$);
SELECT * FROM bg_util.try($$SELECT dedup_resume(-1)$$);
SELECT * FROM bg_util.try($$SELECT dedup_cancel(-1)$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s)', :jid));
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s, %L)', :jid, '1s'));
COMMIT;
SELECT count(*) - :jobs_now AS new_jobs FROM dedup_jobs;
SELECT count(*) - :archives_now AS new_archives
  FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS acct_unchanged FROM bg.acct a;
SELECT id, name FROM bg.nopk ORDER BY id;

--
-- privileges: a non-superuser owner submits (paused before COMMIT).  Another
-- role neither sees nor controls the job (42704 as for any job it cannot
-- see) and cannot submit for a table it does not own (42501).
-- pg_read_all_stats sees the job and may wait for it, but controls nothing
-- (42501).  A superuser may resume it; the job still runs as its submitter
-- (its filter, evaluated by the worker, tests current_user).
--
RESET search_path;
CREATE SCHEMA bgp AUTHORIZATION regress_bg_owner;
GRANT USAGE ON SCHEMA bgp TO regress_bg_other, regress_bg_stats;
SET ROLE regress_bg_owner;
CREATE TABLE bgp.m (id int PRIMARY KEY, k text NOT NULL);
INSERT INTO bgp.m SELECT g, 'k' || g % 3 FROM generate_series(1, 9) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON bgp.m TO regress_bg_other;
BEGIN;
SELECT job_id AS jid_o FROM dedup_table('bgp.m', '{k}', filter => 'current_user = ''regress_bg_owner''',
                                        background => true) \gset
SELECT dedup_pause(:jid_o) AS paused;
COMMIT;
SELECT state, submitted_by FROM dedup_jobs WHERE job_id = :jid_o;

SET ROLE regress_bg_other;
SELECT count(*) AS visible FROM dedup_jobs WHERE job_id = :jid_o;
SELECT count(*) AS in_progress FROM dedup_progress WHERE job_id = :jid_o;
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s, %L)', :jid_o, '1s'));
SELECT * FROM bg_util.try(format('SELECT dedup_pause(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_resume(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_cancel(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_rollback(%s)', :jid_o));
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bgp.m', '{k}', background => true)$$);

SET ROLE regress_bg_stats;
SELECT state, submitted_by FROM dedup_jobs WHERE job_id = :jid_o;
SELECT state FROM dedup_progress WHERE job_id = :jid_o;
SELECT dedup_wait(:jid_o);
SELECT * FROM bg_util.try(format('SELECT dedup_pause(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_resume(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_cancel(%s)', :jid_o));
SELECT * FROM bg_util.try(format('SELECT dedup_rollback(%s)', :jid_o));

-- nothing changed by the refused calls
RESET ROLE;
SELECT state FROM dedup_jobs WHERE job_id = :jid_o;
SELECT count(*) AS m_rows FROM bgp.m;

-- a superuser resumes it; the worker runs it as regress_bg_owner, deferred
-- triggers included (they fire when a batch commits)
SET ROLE regress_bg_owner;
CREATE TABLE bgp.deleted_by (who name);
CREATE FUNCTION bgp.note_deleter() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO bgp.deleted_by VALUES (current_user); RETURN NULL; END$$;
CREATE CONSTRAINT TRIGGER m_deleted AFTER DELETE ON bgp.m DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION bgp.note_deleter();
RESET ROLE;
SELECT dedup_resume(:jid_o) AS resumed;
SELECT dedup_wait(:jid_o);
SELECT state, submitted_by, rows_deleted FROM dedup_jobs WHERE job_id = :jid_o;
SELECT who, count(*) FROM bgp.deleted_by GROUP BY who;
DROP TRIGGER m_deleted ON bgp.m;
SELECT id, k FROM bgp.m ORDER BY id;
SELECT has_table_privilege('regress_bg_owner', j.archive_table, 'SELECT') AS owner_reads_archive,
       has_table_privilege('regress_bg_owner', j.archive_table, 'INSERT') AS owner_adds_after_the_job,
       c.relowner = (SELECT extowner FROM pg_extension WHERE extname = 'dedup_ext') AS archive_owned_by_extension
  FROM dedup_jobs j JOIN pg_class c ON c.oid = j.archive_table WHERE j.job_id = :jid_o;
SET ROLE regress_bg_owner;
SELECT dedup_rollback(:jid_o) AS restored;

-- the submitter no longer owns the table when the job starts: the job fails
-- (42501, in dedup_jobs.error) and changes nothing
BEGIN;
SELECT job_id AS jid_lost FROM dedup_table('bgp.m', '{k}', background => true) \gset
SELECT dedup_pause(:jid_lost) AS paused;
COMMIT;
RESET ROLE;
ALTER TABLE bgp.m OWNER TO regress_bg_other;
SET ROLE regress_bg_owner;
SELECT dedup_resume(:jid_lost) AS resumed;
SELECT dedup_wait(:jid_lost);
SELECT state, rows_deleted, split_part(error, E'\n', 1) AS error FROM dedup_jobs WHERE job_id = :jid_lost;
RESET ROLE;
SELECT count(*) AS m_rows FROM bgp.m;

-- add_unique needs CREATE on the table's schema for its index: refused at
-- submit time (42501), in the foreground and in the background, nothing changed
CREATE SCHEMA bgn;
GRANT USAGE ON SCHEMA bgn TO regress_bg_owner;
CREATE TABLE bgn.u (id int PRIMARY KEY, k int);
INSERT INTO bgn.u SELECT g, g % 3 FROM generate_series(1, 9) g;
ALTER TABLE bgn.u OWNER TO regress_bg_owner;
SET ROLE regress_bg_owner;
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bgn.u', '{k}', add_unique => true)$$);
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bgn.u', '{k}', add_unique => true, background => true)$$);
SELECT count(*) AS u_jobs FROM dedup_jobs WHERE relation_name = 'u';
RESET ROLE;
SELECT count(*) AS u_rows FROM bgn.u;
DROP SCHEMA bgn CASCADE;

-- a row-level security policy for DELETE that hides losers the pass saw
-- (the owner is under FORCE ROW LEVEL SECURITY): the first batch fails
-- (09000), as the foreground does, and the batch changed nothing (the job
-- deleted what it could for 25 passes, then blamed writers)
SET ROLE regress_bg_owner;
CREATE TABLE bgp.r (id int PRIMARY KEY, k text);
INSERT INTO bgp.r SELECT g, 'k' || g % 4 FROM generate_series(1, 40) g;
ALTER TABLE bgp.r ENABLE ROW LEVEL SECURITY;
ALTER TABLE bgp.r FORCE ROW LEVEL SECURITY;
CREATE POLICY r_sel ON bgp.r FOR SELECT USING (true);
CREATE POLICY r_del ON bgp.r FOR DELETE USING (id % 3 = 0);
SELECT job_id AS jid_rls FROM dedup_table('bgp.r', '{k}', background => true) \gset
SELECT dedup_wait(:jid_rls);
SELECT state, passes, rows_deleted, split_part(error, E'\n', 1) AS error FROM dedup_jobs WHERE job_id = :jid_rls;
SELECT count(*) AS r_rows FROM bgp.r;
RESET ROLE;

-- a column of the table named as the batch's own alias for a survivor's
-- ctid (dedup_sctid) made every batch fail (42702)
CREATE TABLE bg.sct (id int PRIMARY KEY, k text, dedup_sctid text);
INSERT INTO bg.sct (id, k) SELECT g, 'k' || g % 3 FROM generate_series(1, 30) g;
SELECT job_id AS jid_sct FROM dedup_table('bg.sct', '{k}', background => true, batch_size => 10) \gset
SELECT dedup_wait(:jid_sct);
SELECT state, rows_deleted, (SELECT count(*) FROM bg.sct) AS left FROM dedup_jobs WHERE job_id = :jid_sct;

-- archives of the jobs not rolled back
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT archive_table FROM dedup_jobs
            WHERE archive_table IS NOT NULL AND (relation::text LIKE 'bg.%' OR relation::text LIKE 'bgp.%')
  LOOP
    EXECUTE format('DROP TABLE %s', r.archive_table);
  END LOOP;
END $$;

--
-- a table whose columns change before the job's first batch (the job was
-- paused; a migration's next step could do it): nothing is archived yet,
-- so the first batch makes the archive again with the table's columns, and
-- the job goes on
--
CREATE TABLE bg.cols (id int PRIMARY KEY, k int NOT NULL, a int, b int);
INSERT INTO bg.cols SELECT g, g % 3, g, -g FROM generate_series(1, 12) g;
BEGIN;
SELECT job_id AS jid_c, archive_table AS arch_c
  FROM dedup_table('bg.cols', '{k}', background => true, batch_size => 2) \gset
SELECT dedup_pause(:jid_c) AS paused;
COMMIT;
ALTER TABLE bg.cols RENAME COLUMN a TO a_old;
ALTER TABLE bg.cols ADD COLUMN a int;
SELECT dedup_resume(:jid_c) AS resumed;
SELECT dedup_wait(:jid_c);
SELECT state, rows_deleted, error, archive_table::text = :'arch_c' AS same_archive
  FROM dedup_jobs WHERE job_id = :jid_c;
SELECT string_agg(attname, ', ' ORDER BY attnum) AS archive_columns
  FROM pg_attribute WHERE attrelid = :'arch_c'::regclass AND attnum > 0 AND NOT attisdropped;
SELECT dedup_rollback(:jid_c) AS restored;
SELECT string_agg(format('%s:%s:%s:%s:%s', id, k, a_old, b, a), ' ' ORDER BY id) AS restored_rows
  FROM bg.cols WHERE id > 9;
-- in the submitting transaction, the table renamed as well: the archive is
-- made again under the table's new name (dedup_jobs.archive_table names it)
CREATE TABLE bg.cols2 (id int PRIMARY KEY, k int NOT NULL);
INSERT INTO bg.cols2 SELECT g, g % 3 FROM generate_series(1, 12) g;
BEGIN;
SELECT job_id AS jid_cr, archive_table AS arch_cr
  FROM dedup_table('bg.cols2', '{k}', background => true) \gset
ALTER TABLE bg.cols2 ADD COLUMN note text DEFAULT 'x';
ALTER TABLE bg.cols2 RENAME TO cols3;
COMMIT;
SELECT dedup_wait(:jid_cr);
SELECT state, rows_deleted, regexp_replace(archive_table::text, '_[0-9]+$', '_N') AS archive,
       to_regclass(:'arch_cr') IS NULL AS first_archive_gone
  FROM dedup_jobs WHERE job_id = :jid_cr;
SELECT dedup_rollback(:jid_cr) AS restored;
SELECT count(*) AS table_rows, count(*) FILTER (WHERE note = 'x') AS with_note FROM bg.cols3;
DROP TABLE bg.cols3;
--
-- and between two batches: the batch would file its rows under the
-- archive's columns by position, so the job fails instead, and removes
-- nothing more.  The stop trigger pauses the job in its first batch.
--
CREATE TRIGGER cols_stop BEFORE DELETE ON bg.cols FOR EACH ROW EXECUTE FUNCTION bg.stop_trigger();
BEGIN;
SELECT job_id AS jid_c, archive_table AS arch_c
  FROM dedup_table('bg.cols', '{k}', background => true, batch_size => 2) \gset
INSERT INTO bg.stop_request VALUES (:jid_c, 'pause');
COMMIT;
SELECT dedup_wait(:jid_c);
DELETE FROM bg.stop_request;
DROP TRIGGER cols_stop ON bg.cols;
ALTER TABLE bg.cols RENAME COLUMN a_old TO a_older;
SELECT dedup_resume(:jid_c) AS resumed;
SELECT dedup_wait(:jid_c);
SELECT state, rows_deleted, split_part(error, ':', 1) AS sqlstate,
       regexp_replace(error, '[0-9]+', 'N', 'g') AS error
  FROM dedup_jobs WHERE job_id = :jid_c;
SELECT (SELECT count(*) FROM bg.cols) AS rows_left, (SELECT count(*) FROM :arch_c) AS archived;
-- its committed batch rolls back once the table has the archive's columns again
ALTER TABLE bg.cols RENAME COLUMN a_older TO a_old;
SELECT dedup_rollback(:jid_c) AS restored;
SELECT count(*) AS rows_back FROM bg.cols;
-- its archive dropped by hand while the job was paused: nowhere to put what
-- a batch removes, so the job fails (55000) and removes nothing
BEGIN;
SELECT job_id AS jid_a, archive_table AS arch_a
  FROM dedup_table('bg.cols', '{k}', background => true) \gset
SELECT dedup_pause(:jid_a) AS paused;
COMMIT;
DROP TABLE :arch_a;
SELECT dedup_resume(:jid_a) AS resumed;
SELECT dedup_wait(:jid_a);
SELECT state, split_part(error, ':', 1) AS sqlstate, regexp_replace(error, '[0-9]+', 'N', 'g') AS error
  FROM dedup_jobs WHERE job_id = :jid_a;
SELECT count(*) AS rows_left FROM bg.cols;
-- a transaction that submitted a background job cannot be prepared: its
-- worker starts at its COMMIT, and COMMIT PREPARED would start none (the
-- job stayed queued); the PREPARE fails, and the submission is rolled back
CREATE TABLE bg.twophase (id int PRIMARY KEY, k text);
INSERT INTO bg.twophase VALUES (1, 'a'), (2, 'a');
BEGIN;
SELECT state FROM dedup_table('bg.twophase', '{k}', background => true);
\set VERBOSITY sqlstate
PREPARE TRANSACTION 'dedup_bg';
\set VERBOSITY default
BEGIN;
SELECT state FROM dedup_table('bg.twophase', '{k}', background => true);
PREPARE TRANSACTION 'dedup_bg';
SELECT count(*) AS jobs FROM dedup_jobs WHERE relation = 'bg.twophase'::regclass;
DROP TABLE bg.twophase;

-- a table dropped while its job was paused: the job fails and says so
BEGIN;
SELECT job_id AS jid_d FROM dedup_table('bg.cols', '{k}', background => true) \gset
SELECT dedup_pause(:jid_d) AS paused;
COMMIT;
DROP TABLE bg.cols;
SELECT dedup_resume(:jid_d) AS resumed;
SELECT dedup_wait(:jid_d);
SELECT state, split_part(error, ':', 1) AS sqlstate, regexp_replace(error, '[0-9]+', 'N', 'g') AS error
  FROM dedup_jobs WHERE job_id = :jid_d;

-- a backfill's parent table dropped while the job was paused: the same
CREATE TABLE bg.gone_p (id int PRIMARY KEY, code text);
INSERT INTO bg.gone_p VALUES (1, 'a');
CREATE TABLE bg.gone_c (id int PRIMARY KEY, code text, pid int);
INSERT INTO bg.gone_c VALUES (1, 'a');
BEGIN;
SELECT job_id AS jid_gp FROM backfill_fk('bg.gone_c', 'pid', 'bg.gone_p', '{code}', background => true) \gset
SELECT dedup_pause(:jid_gp) AS paused;
COMMIT;
DROP TABLE bg.gone_p;
SELECT dedup_resume(:jid_gp) AS resumed;
SELECT dedup_wait(:jid_gp);
SELECT state, split_part(error, ':', 1) AS sqlstate, regexp_replace(error, '[0-9]+', 'N', 'g') AS error,
       (SELECT count(*) FROM bg.gone_c WHERE pid IS NULL) AS rows_unlinked
  FROM dedup_jobs WHERE job_id = :jid_gp;
DROP TABLE bg.gone_c;

-- a BEFORE DELETE trigger that spares a loser: the batch that meets it
-- fails the job at once (09000, as in the foreground; every pass found it
-- again, and the job failed after 25 of them); the batches before it stay
-- done
CREATE TABLE bg.veto (id int PRIMARY KEY, k text);
INSERT INTO bg.veto SELECT g, 'k' || (g % 10) FROM generate_series(1, 100) g;
CREATE FUNCTION bg.spare_50() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.id = 50 THEN RETURN NULL; END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER spare_50 BEFORE DELETE ON bg.veto FOR EACH ROW EXECUTE FUNCTION bg.spare_50();
SELECT job_id AS jid_v FROM dedup_table('bg.veto', '{k}', background => true, batch_size => 20) \gset
SELECT dedup_wait(:jid_v, '120s');
SELECT state, rows_deleted, regexp_replace(error, '[0-9]+ passes', 'N passes') AS error
  FROM dedup_jobs WHERE job_id = :jid_v;
SELECT count(*) AS rows_left FROM bg.veto;

-- a BEFORE UPDATE trigger that spares a loser of a rename: the batch that
-- meets it fails the job at once (09000, as in the foreground), instead of
-- archiving the loser as renamed; the batches before it stay done and roll
-- back exactly (the archive holds what they renamed, no more)
CREATE TABLE bg.renveto (id int PRIMARY KEY, k text);
INSERT INTO bg.renveto SELECT g, 'k' || (g % 10) FROM generate_series(1, 100) g;
CREATE TABLE bg.renveto_before AS SELECT * FROM bg.renveto;
CREATE FUNCTION bg.spare_95() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.id = 95 THEN RETURN NULL; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER spare_95 BEFORE UPDATE ON bg.renveto FOR EACH ROW EXECUTE FUNCTION bg.spare_95();
SELECT job_id AS jid_rv FROM dedup_table('bg.renveto', '{k}', action => 'rename', background => true,
                                         batch_size => 20) \gset
SELECT dedup_wait(:jid_rv, '120s');
SELECT state, rows_renamed > 0 AS some_renamed, split_part(error, ':', 1) AS sqlstate,
       regexp_replace(split_part(error, E'\n', 1), '[0-9]+', 'N', 'g') AS error
  FROM dedup_jobs WHERE job_id = :jid_rv;
SELECT dedup_rollback(:jid_rv) > 0 AS rolled_back;
SELECT count(*) AS differ FROM (SELECT * FROM bg.renveto EXCEPT SELECT * FROM bg.renveto_before) d;

-- an archive made by the previous version (a job submitted before an
-- upgrade) has no dedup_xact: the job and its rollback work without it
CREATE TABLE bg.old (id int PRIMARY KEY, k text);
INSERT INTO bg.old SELECT g, 'o' || (g % 5) FROM generate_series(1, 20) g;
BEGIN;
SELECT job_id AS jid_old FROM dedup_table('bg.old', '{k}', action => 'rename', background => true) \gset
CREATE FUNCTION pg_temp.drop_xact(j bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER TABLE %s DROP COLUMN dedup_xact', (SELECT archive_table FROM dedup_jobs WHERE job_id = j));
END $$;
SELECT pg_temp.drop_xact(:jid_old);
COMMIT;
SELECT dedup_wait(:jid_old, '60s');
SELECT rows_renamed FROM dedup_jobs WHERE job_id = :jid_old;
SELECT dedup_rollback(:jid_old) AS restored;
SELECT count(DISTINCT k) AS keys FROM bg.old;

-- one background job per table at a time: a second submission while the
-- first is paused is refused (55006), and goes through once it is cancelled
CREATE TABLE bg.one (id int PRIMARY KEY, k int);
INSERT INTO bg.one SELECT g, g % 3 FROM generate_series(1, 9) g;
BEGIN;
SELECT job_id AS jid_one FROM dedup_table('bg.one', '{k}', background => true, add_unique => true) \gset
SELECT dedup_pause(:jid_one) AS paused;
COMMIT;
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.one', '{k}', background => true, add_unique => true)$$);
SELECT code FROM bg_util.try($$SELECT * FROM backfill_fk('bg.one', 'k', 'bg.one', '{id}', background => true)$$);
SELECT dedup_cancel(:jid_one) AS cancelled;
-- cancelled before its first batch, it leaves no empty archive
SELECT archive_table IS NULL AS no_archive FROM dedup_jobs WHERE job_id = :jid_one;
SELECT dedup_rollback(:jid_one) AS restored;
SELECT job_id AS jid_two FROM dedup_table('bg.one', '{k}', background => true, add_unique => true) \gset
SELECT dedup_wait(:jid_two);

-- a background backfill with add_constraint whose orphans would stay NULL
-- fails before linking anything (23502), not after every batch
CREATE TABLE bg.bp (id int PRIMARY KEY, code text UNIQUE);
INSERT INTO bg.bp VALUES (1, 'a');
CREATE TABLE bg.bc (id int PRIMARY KEY, code text, pid int);
INSERT INTO bg.bc SELECT g, CASE WHEN g % 10 = 0 THEN 'zz' ELSE 'a' END, NULL FROM generate_series(1, 50) g;
SELECT job_id AS jid_bc FROM backfill_fk('bg.bc', 'pid', 'bg.bp', '{code}', add_constraint => true,
                                         background => true, batch_size => 10) \gset
SELECT dedup_wait(:jid_bc);
SELECT state, split_part(error, E'\n', 1) AS error FROM dedup_jobs WHERE job_id = :jid_bc;
SELECT count(pid) AS linked FROM bg.bc;

-- one whose linkable row a BEFORE UPDATE trigger keeps NULL fails when its
-- constraints stage links the rows written since the sweep and finds that
-- one still NULL (23502), before any constraint goes on (it went on to add
-- the foreign key and a NOT VALID CHECK, which refused the application's
-- rows with pid NULL after the job had failed); its rollback takes back
-- its links
CREATE TABLE bg.kp (id int PRIMARY KEY, code text UNIQUE);
INSERT INTO bg.kp VALUES (1, 'a');
CREATE TABLE bg.kc (id int PRIMARY KEY, code text, pid int);
INSERT INTO bg.kc SELECT g, 'a', NULL FROM generate_series(1, 30) g;
CREATE FUNCTION bg.keep_7_null() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.id = 7 THEN NEW.pid := NULL; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER keep_7_null BEFORE UPDATE ON bg.kc FOR EACH ROW EXECUTE FUNCTION bg.keep_7_null();
SELECT job_id AS jid_kc FROM backfill_fk('bg.kc', 'pid', 'bg.kp', '{code}', add_constraint => true,
                                         background => true, batch_size => 10) \gset
SELECT dedup_wait(:jid_kc);
SELECT state, split_part(error, E'\n', 1) AS error, split_part(error, E'\n', 2) AS detail
  FROM dedup_jobs WHERE job_id = :jid_kc;
SELECT count(pid) AS linked,
       (SELECT count(*) FROM pg_constraint WHERE conrelid = 'bg.kc'::regclass AND contype IN ('c', 'f')) AS constraints
  FROM bg.kc;
INSERT INTO bg.kc VALUES (100, 'a', NULL);
SELECT dedup_rollback(:jid_kc) AS restored;
SELECT count(pid) AS linked FROM bg.kc;
-- one that fails after its first constraint stage committed (a row already
-- names a parent that does not exist: the foreign key's VALIDATE fails,
-- 23503) drops the NOT VALID foreign key it added, which would go on
-- refusing the application's rows
DROP TRIGGER keep_7_null ON bg.kc;
UPDATE bg.kc SET pid = NULL;
UPDATE bg.kc SET pid = 99 WHERE id = 100;
SELECT job_id AS jid_kv FROM backfill_fk('bg.kc', 'pid', 'bg.kp', '{code}', add_constraint => true,
                                         background => true, batch_size => 10) \gset
SELECT dedup_wait(:jid_kv);
SELECT state, split_part(error, E'\n', 1) AS error FROM dedup_jobs WHERE job_id = :jid_kv;
SELECT count(pid) AS linked,
       (SELECT count(*) FROM pg_constraint WHERE conrelid = 'bg.kc'::regclass AND contype IN ('c', 'f')) AS constraints
  FROM bg.kc;
INSERT INTO bg.kc VALUES (101, 'a', 98);
SELECT dedup_rollback(:jid_kv) AS restored;
SELECT count(pid) AS linked FROM bg.kc;

-- one cancelled in its constraints stage drops what its committed stages
-- added too: paused after its first ALTER TABLE (the foreign key, NOT
-- VALID) and cancelled while paused, or cancelled by its worker after the
-- third (the NOT VALID CHECK); the ALTER TABLE that stops it is counted by
-- an event trigger
CREATE TABLE bg.ddl_stop (job_id bigint, what text, n int);
CREATE FUNCTION bg.stop_at_ddl() RETURNS event_trigger LANGUAGE plpgsql
  SET search_path = public, pg_temp AS $$
BEGIN
  UPDATE bg.ddl_stop SET n = n - 1;
  PERFORM CASE s.what WHEN 'pause' THEN dedup_pause(s.job_id) ELSE dedup_cancel(s.job_id) END
     FROM bg.ddl_stop s WHERE s.n = 0;
END $$;
CREATE EVENT TRIGGER stop_at_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
  EXECUTE FUNCTION bg.stop_at_ddl();
UPDATE bg.kc SET pid = NULL;
BEGIN;
SELECT job_id AS jid_kp FROM backfill_fk('bg.kc', 'pid', 'bg.kp', '{code}', add_constraint => true,
                                         background => true) \gset
INSERT INTO bg.ddl_stop VALUES (:jid_kp, 'pause', 1);
COMMIT;
SELECT dedup_wait(:jid_kp);
SELECT phase, checkpoint,
       (SELECT string_agg(contype::text || ' ' || convalidated, ', ') FROM pg_constraint
         WHERE conrelid = 'bg.kc'::regclass AND contype IN ('c', 'f')) AS constraints
  FROM dedup_jobs WHERE job_id = :jid_kp;
DELETE FROM bg.ddl_stop;
SELECT dedup_cancel(:jid_kp) AS cancelled;
SELECT state, (SELECT count(*) FROM pg_constraint WHERE conrelid = 'bg.kc'::regclass AND contype IN ('c', 'f')) AS constraints,
       (SELECT count(pid) FROM bg.kc) AS linked
  FROM dedup_jobs WHERE job_id = :jid_kp;
SELECT dedup_rollback(:jid_kp) AS restored;
BEGIN;
SELECT job_id AS jid_kx FROM backfill_fk('bg.kc', 'pid', 'bg.kp', '{code}', add_constraint => true,
                                         background => true) \gset
INSERT INTO bg.ddl_stop VALUES (:jid_kx, 'cancel', 3);
COMMIT;
SELECT dedup_wait(:jid_kx);
SELECT state, checkpoint AS stage_next, (SELECT count(*) FROM pg_constraint WHERE conrelid = 'bg.kc'::regclass AND contype IN ('c', 'f')) AS constraints,
       (SELECT count(pid) FROM bg.kc) AS linked
  FROM dedup_jobs WHERE job_id = :jid_kx;
DROP EVENT TRIGGER stop_at_ddl;
INSERT INTO bg.kc VALUES (102, 'a', NULL);
SELECT dedup_rollback(:jid_kx) AS restored;

-- a queued job whose archive was dropped by hand can still be cancelled
BEGIN;
SELECT job_id AS jid_na, archive_table AS arch_na
  FROM dedup_table('bg.one', '{k}', background => true) \gset
SELECT dedup_pause(:jid_na) AS paused;
COMMIT;
-- a job not yet finished keeps its archive: dedup_drop_archive refuses
-- (55000), and a NULL job id (22023)
SELECT * FROM bg_util.try(format('SELECT dedup_drop_archive(%s)', :jid_na));
SELECT * FROM bg_util.try('SELECT dedup_drop_archive(NULL)');
DROP TABLE :arch_na;
SELECT dedup_cancel(:jid_na) AS cancelled;
SELECT state, archive_table IS NULL AS no_archive FROM dedup_jobs WHERE job_id = :jid_na;

-- a long dedup_ext.batch_delay does not keep a worker asked to stop: the
-- pause between batches looks for the request once a second
CREATE TABLE bg.slow (id int PRIMARY KEY, k int);
INSERT INTO bg.slow SELECT g, g % 2 FROM generate_series(1, 6) g;
SET dedup_ext.batch_delay = 600000;
SELECT job_id AS jid_slow FROM dedup_table('bg.slow', '{k}', background => true, batch_size => 1) \gset
RESET dedup_ext.batch_delay;
DO $$
BEGIN
  FOR i IN 1..600 LOOP
    EXIT WHEN (SELECT batches_done FROM dedup_jobs WHERE job_id = (SELECT max(job_id) FROM dedup_jobs WHERE relation = 'bg.slow'::regclass)) >= 1;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
-- a transaction that holds a lock on the job's table that its batches need
-- cannot wait for the job (a row it locked would keep it waiting forever);
-- one that only read the table can (the job builds no index)
BEGIN;
SELECT count(*) AS rows_seen FROM bg.slow;
SELECT dedup_wait(:jid_slow, '0.2 s') AS state;
SELECT count(*) AS locked FROM (SELECT FROM bg.slow WHERE id = 2 FOR UPDATE) l;
SELECT * FROM bg_util.try(format('SELECT dedup_wait(%s, ''1 s'')', :jid_slow));
SELECT dedup_wait(:jid_slow, '0') AS state_now;
ROLLBACK;
SELECT dedup_cancel(:jid_slow) AS cancel_asked;
SELECT dedup_wait(:jid_slow, '20s') AS state;
SELECT count(*) AS rows_left FROM bg.slow;

-- an index build that fails for good (a key too large for a btree entry):
-- the job fails with the error, and leaves no invalid index behind
CREATE TABLE bg.wide (id int PRIMARY KEY, k text);
INSERT INTO bg.wide SELECT g, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 100) i)
  FROM generate_series(1, 3) g;
SELECT job_id AS jid_wide FROM dedup_table('bg.wide', '{k}', background => true, add_unique => true) \gset
SELECT dedup_wait(:jid_wide, '60s') AS state;
-- a timeout beyond any date waits for the end, as NULL does (it overflowed)
SELECT dedup_wait(:jid_wide, '1000000 years') AS state;
SELECT split_part(error, ':', 1) AS sqlstate FROM dedup_jobs WHERE job_id = :jid_wide;
SELECT count(*) AS indexes_left FROM pg_index WHERE indrelid = 'bg.wide'::regclass AND NOT indisprimary;
SELECT count(*) AS rows_left FROM bg.wide;

-- the worker evaluates a job as the submitting session would: a filter's
-- date constant is stored as ISO (it was stored as 01/02/2024, which the
-- worker read back as 2 January, and deleted a row the filter left out),
-- the unique index's predicate holds the day meant; a timestamptz constant
-- keeps its offset (IST was read back as Israel's); a filter on the hour and
-- a keep on the date of a timestamptz follow the session's TimeZone, and a
-- rename's suffix is the primary key's text in the session's DateStyle
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'Asia/Tokyo';
CREATE TABLE bg.dsf (id int PRIMARY KEY, k int, d date);
INSERT INTO bg.dsf VALUES (1, 1, '2024-01-15'), (2, 1, '2024-01-16'), (3, 2, '2024-03-01'), (4, 2, '2024-03-02');
SELECT job_id AS jid_dsf FROM dedup_table('bg.dsf', '{k}', filter => 'd >= ''2024-02-01''',
                                          add_unique => true, background => true) \gset
SELECT dedup_wait(:jid_dsf, '60s') AS state;
SELECT id FROM bg.dsf ORDER BY id;
INSERT INTO bg.dsf VALUES (5, 1, '2024-01-20');
SELECT * FROM bg_util.try('INSERT INTO bg.dsf VALUES (6, 2, ''2024-03-05'')');
CREATE TABLE bg.tzb (id int PRIMARY KEY, k int, ts timestamptz);
INSERT INTO bg.tzb VALUES (1, 1, '2024-01-01 05:00+09'), (2, 1, '2024-01-01 06:00+09'),
                          (3, 2, '2024-01-01 05:00+09'), (4, 2, '2024-01-01 06:00+09');
SELECT job_id AS jid_tzb FROM dedup_table('bg.tzb', '{k}', filter => 'extract(hour from ts) >= 12',
                                          background => true) \gset
SELECT dedup_wait(:jid_tzb, '60s') AS state;
SELECT count(*) AS rows_left FROM bg.tzb;
CREATE TABLE bg.tzk (id int PRIMARY KEY, k int, ts timestamptz);
INSERT INTO bg.tzk VALUES (1, 1, '2024-01-01 08:00+09'), (2, 1, '2024-01-01 10:00+09');
SELECT row_id, decision FROM dedup_preview('bg.tzk', '{k}', keep => '(ts::date = ''2024-01-01'') DESC, id');
SELECT job_id AS jid_tzk FROM dedup_table('bg.tzk', '{k}', keep => '(ts::date = ''2024-01-01'') DESC, id',
                                          background => true) \gset
SELECT dedup_wait(:jid_tzk, '60s') AS state;
SELECT id FROM bg.tzk;
CREATE TABLE bg.rts (id timestamptz PRIMARY KEY, t text);
INSERT INTO bg.rts VALUES ('2024-01-01 00:00+00', 'a'), ('2024-01-02 00:00+00', 'a');
SELECT new_value FROM dedup_preview('bg.rts', '{t}', action => 'rename') WHERE decision = 'rename';
SELECT job_id AS jid_rts FROM dedup_table('bg.rts', '{t}', action => 'rename', background => true) \gset
SELECT dedup_wait(:jid_rts, '60s') AS state;
SELECT t FROM bg.rts ORDER BY id;
SET TimeZone = 'Asia/Kolkata';
CREATE TABLE bg.ist (id int PRIMARY KEY, k int, ts timestamptz);
INSERT INTO bg.ist VALUES (1, 1, '2024-01-01 04:00+05:30'), (2, 1, '2024-01-01 05:00+05:30');
SELECT total_rows, duplicate_rows FROM dedup_audit('bg.ist', '{k}', filter => 'ts >= ''2024-01-01 03:00''');
RESET DateStyle;
RESET TimeZone;

-- a rename the column refuses (varchar(5)) fails the job with the
-- foreground's error, and a job that failed before its first batch leaves
-- no empty archive
CREATE TABLE bg.r5 (id int PRIMARY KEY, k varchar(5));
INSERT INTO bg.r5 VALUES (1, 'abcde'), (2, 'abcde');
SELECT job_id AS jid_r5 FROM dedup_table('bg.r5', '{k}', action => 'rename', background => true) \gset
SELECT dedup_wait(:jid_r5, '60s') AS state;
SELECT split_part(error, ':', 1) AS sqlstate, archive_table FROM dedup_jobs WHERE job_id = :jid_r5;
SELECT count(*) AS archives FROM pg_tables WHERE schemaname = 'dedup_archive' AND tablename LIKE 'r5\_%';

-- a background backfill whose parent_key names other columns than
-- child_key (the worker read parent_key as NULL, and failed on the child's
-- names); the orphan it makes a parent for is listed, as in the foreground
CREATE TABLE bg.pk_p (id serial PRIMARY KEY, name text UNIQUE);
INSERT INTO bg.pk_p (name) VALUES ('a'), ('b');
CREATE TABLE bg.pk_c (id int PRIMARY KEY, pname text, pid int);
INSERT INTO bg.pk_c VALUES (1, 'a'), (2, 'b'), (3, 'z');
SELECT job_id AS jid_pk FROM backfill_fk('bg.pk_c', 'pid', 'bg.pk_p', '{pname}', parent_key => '{name}',
                                         on_orphan => 'create_parent', background => true) \gset
SELECT dedup_wait(:jid_pk, '60s') AS state;
SELECT c.id, p.name FROM bg.pk_c c JOIN bg.pk_p p ON p.id = c.pid ORDER BY c.id;
SELECT row_id, key_values, reason FROM dedup_orphans WHERE job_id = :jid_pk;
SELECT check_name, ok, detail FROM dedup_verify(:jid_pk);
-- and the orphans it deletes
CREATE TABLE bg.pk_d (id int PRIMARY KEY, pname text, pid int);
INSERT INTO bg.pk_d VALUES (1, 'a'), (2, 'y'), (3, 'y');
SELECT job_id AS jid_pd FROM backfill_fk('bg.pk_d', 'pid', 'bg.pk_p', '{pname}', parent_key => '{name}',
                                         on_orphan => 'delete', background => true) \gset
SELECT dedup_wait(:jid_pd, '60s') AS state;
SELECT row_id, key_values, reason FROM dedup_orphans WHERE job_id = :jid_pd ORDER BY row_id;
SELECT check_name, ok, detail FROM dedup_verify(:jid_pd);

-- a volatile filter is refused for a background job, which reads the table
-- more than once (it deleted rows by chance for 25 passes, then failed)
CREATE TABLE bg.vol (id int PRIMARY KEY, k int);
INSERT INTO bg.vol SELECT g, g % 10 FROM generate_series(1, 100) g;
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.vol', '{k}', filter => 'random() < 0.5', background => true)$$);
SELECT count(*) AS jobs FROM dedup_jobs WHERE relation = 'bg.vol'::regclass;

-- a background merge and a background job on a table that references the
-- merge's are refused either way round (each archived rows the other
-- changed, and neither could be rolled back before the other)
CREATE TABLE bg.mp (id int PRIMARY KEY, k int);
INSERT INTO bg.mp SELECT g, g % 3 FROM generate_series(1, 9) g;
CREATE TABLE bg.mc (id int PRIMARY KEY, mp_id int REFERENCES bg.mp, tag int);
INSERT INTO bg.mc SELECT g, g, g % 2 FROM generate_series(1, 9) g;
BEGIN;
SELECT job_id AS jid_mp FROM dedup_table('bg.mp', '{k}', action => 'merge', background => true) \gset
SELECT dedup_pause(:jid_mp) AS paused;
COMMIT;
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.mc', '{tag}', background => true)$$);
SELECT dedup_cancel(:jid_mp) AS cancelled;
BEGIN;
SELECT job_id AS jid_mc FROM dedup_table('bg.mc', '{tag}', background => true) \gset
SELECT dedup_pause(:jid_mc) AS paused;
COMMIT;
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.mp', '{k}', action => 'merge', background => true)$$);
-- a background backfill and a background dedup of its parent table refuse
-- each other (the backfill would link to parents the dedup removes)
CREATE TABLE bg.rbp (id int PRIMARY KEY, code text);
INSERT INTO bg.rbp VALUES (1, 'a'), (2, 'a');
CREATE TABLE bg.rbc (id int PRIMARY KEY, code text, pid int);
INSERT INTO bg.rbc VALUES (1, 'a', NULL);
BEGIN;
SELECT job_id AS jid_rbc FROM backfill_fk('bg.rbc', 'pid', 'bg.rbp', '{code}', background => true) \gset
SELECT dedup_pause(:jid_rbc) AS paused;
COMMIT;
SELECT * FROM bg_util.try($$SELECT * FROM dedup_table('bg.rbp', '{code}', background => true)$$);
SELECT dedup_cancel(:jid_rbc) AS cancelled;
BEGIN;
SELECT job_id AS jid_rbp FROM dedup_table('bg.rbp', '{code}', background => true) \gset
SELECT dedup_pause(:jid_rbp) AS paused;
COMMIT;
SELECT * FROM bg_util.try($$SELECT * FROM backfill_fk('bg.rbc', 'pid', 'bg.rbp', '{code}', background => true)$$);
SELECT dedup_cancel(:jid_rbp) AS cancelled;
-- a delete on the referenced table is no merge: it is queued
BEGIN;
SELECT job_id AS jid_md, state FROM dedup_table('bg.mp', '{k}', background => true) \gset
SELECT :'state' AS state, dedup_pause(:jid_md) AS paused;
COMMIT;
SELECT dedup_cancel(:jid_md) AS cancelled, dedup_cancel(:jid_mc) AS cancelled;

-- no job is left waiting for a worker
SELECT state, count(*) FROM dedup_jobs
 WHERE relation::text LIKE 'bg%.%' GROUP BY state ORDER BY state;

SET client_min_messages = warning;
DROP SCHEMA bg CASCADE;
DROP SCHEMA bgp CASCADE;
DROP SCHEMA bg_util CASCADE;
DROP OWNED BY regress_bg_owner, regress_bg_other, regress_bg_stats;
DROP ROLE regress_bg_owner;
DROP ROLE regress_bg_other;
DROP ROLE regress_bg_stats;
RESET client_min_messages;
RESET statement_timeout;
