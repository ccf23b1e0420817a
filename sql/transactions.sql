--
-- transactions: a foreground job commits or rolls back with its caller's transaction.
-- After ROLLBACK there is no job row, no archive table, no index.
--
CREATE SCHEMA tx;
SET search_path = tx, public;

CREATE TABLE tx.orders (id int PRIMARY KEY, ext_ref text NOT NULL, total int NOT NULL);
INSERT INTO tx.orders SELECT g, 'R' || g % 5, g FROM generate_series(1, 20) g;
SELECT md5(string_agg(o::text, ',' ORDER BY id)) AS before_md5 FROM tx.orders o \gset
SELECT count(*) AS njobs FROM dedup_jobs \gset
SELECT count(*) AS narch FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace \gset

-- a view of the state that must come back after each ROLLBACK
CREATE TABLE tx.before AS SELECT :'before_md5'::text AS md5, :njobs::bigint AS njobs, :narch::bigint AS narch;
CREATE FUNCTION tx.state(OUT same_data boolean, OUT new_jobs bigint, OUT new_archives bigint,
                         OUT unique_indexes bigint)
LANGUAGE sql AS $$
  SELECT (SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM tx.orders o)
           = (SELECT md5 FROM tx.before),
         (SELECT count(*) FROM public.dedup_jobs) - (SELECT njobs FROM tx.before),
         (SELECT count(*) FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace)
           - (SELECT narch FROM tx.before),
         (SELECT count(*) FROM pg_index WHERE indrelid = 'tx.orders'::regclass AND NOT indisprimary)
$$;
SELECT * FROM tx.state();

--
-- 1. BEGIN; dedup; ROLLBACK: no trace
--
BEGIN;
SELECT job_id AS jid1, archive_table AS arch1, unique_index AS uidx1
  FROM dedup_table('orders', '{ext_ref}', add_unique => true) \gset
-- inside the transaction the job is done and everything is there
SELECT count(*) AS rows FROM tx.orders;
SELECT kind, state FROM dedup_jobs WHERE job_id = :jid1;
SELECT count(*) AS archived FROM :arch1;
SELECT to_regclass(:'uidx1') IS NOT NULL AS index_exists;
SELECT * FROM tx.state();
ROLLBACK;
SELECT * FROM tx.state();
SELECT count(*) AS job_rows FROM dedup_jobs WHERE job_id = :jid1;
SELECT to_regclass(:'arch1') IS NULL AS no_archive, to_regclass(:'uidx1') IS NULL AS no_index;

--
-- 2. a migration that fails later leaves no trace
--
BEGIN;
SELECT job_id AS jid2, archive_table AS arch2
  FROM dedup_table('orders', '{ext_ref}', action => 'rename', add_unique => true) \gset
SELECT count(DISTINCT ext_ref) AS distinct_refs FROM tx.orders;
ALTER TABLE tx.orders ADD COLUMN oops int NOT NULL DEFAULT 1 / 0;
ROLLBACK;
SELECT * FROM tx.state();
SELECT count(*) AS job_rows FROM dedup_jobs WHERE job_id = :jid2;
SELECT to_regclass(:'arch2') IS NULL AS no_archive;

--
-- 3. savepoints: the job rolled back to a savepoint is gone, the next one commits
--
BEGIN;
SAVEPOINT s1;
SELECT job_id AS jid3a, archive_table AS arch3a
  FROM dedup_table('orders', '{ext_ref}', add_unique => true) \gset
ROLLBACK TO SAVEPOINT s1;
SELECT count(*) AS rows FROM tx.orders;
SELECT count(*) AS job_rows FROM dedup_jobs WHERE job_id = :jid3a;
SELECT job_id AS jid3, archive_table AS arch3
  FROM dedup_table('orders', '{ext_ref}', keep => 'last', add_unique => true) \gset
COMMIT;
SELECT * FROM tx.state();
SELECT count(*) AS job_rows FROM dedup_jobs WHERE job_id = :jid3a;
SELECT to_regclass(:'arch3a') IS NULL AS no_archive_3a;
SELECT id, ext_ref FROM tx.orders ORDER BY id;
SELECT kind, state, rows_deleted, finished_at IS NOT NULL AS finished
  FROM dedup_jobs WHERE job_id = :jid3;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid3);

--
-- 4. a second dedup in the same state finds nothing to do
--
SELECT state, duplicate_groups, rows_deleted, rows_renamed
  FROM dedup_table('orders', '{ext_ref}', dry_run => true);

--
-- 5. dedup_rollback inside a rolled-back transaction: the job stays applied
--
BEGIN;
SELECT dedup_rollback(:jid3) AS restored;
SELECT count(*) AS rows FROM tx.orders;
ROLLBACK;
SELECT count(*) AS rows FROM tx.orders;
SELECT to_regclass(:'arch3') IS NOT NULL AS archive_kept;
SELECT state, rolled_back_by IS NULL AS not_rolled_back FROM dedup_jobs WHERE job_id = :jid3;
SELECT count(*) AS rollback_jobs FROM dedup_jobs WHERE kind = 'rollback' AND target_job = :jid3;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid3);
-- and for real
SELECT dedup_rollback(:jid3) AS restored;
SELECT same_data, unique_indexes FROM tx.state();
SELECT to_regclass(:'arch3') IS NULL AS archive_dropped;
SELECT count(*) AS rollback_jobs FROM dedup_jobs WHERE kind = 'rollback' AND target_job = :jid3;

--
-- 6. a job and its rollback in one committed transaction
--
BEGIN;
SELECT job_id AS jid6 FROM dedup_table('orders', '{ext_ref}', action => 'rename') \gset
SELECT dedup_rollback(:jid6) AS restored;
COMMIT;
SELECT same_data, unique_indexes FROM tx.state();
SELECT kind, state FROM dedup_jobs WHERE job_id = :jid6 OR target_job = :jid6 ORDER BY kind;

--
-- 7. an error inside the call itself (a refusal) in a transaction aborts it like any error
--
BEGIN;
SELECT job_id AS jid7 FROM dedup_table('orders', '{ext_ref}') \gset
\set VERBOSITY sqlstate
SELECT * FROM dedup_table('orders', '{nope}');
\set VERBOSITY default
COMMIT;
SELECT same_data, unique_indexes FROM tx.state();
SELECT count(*) AS job_rows FROM dedup_jobs WHERE job_id = :jid7;

-- a read-only transaction (as on a hot standby): every call that changes
-- something is refused by name (25006), before it reads anything; a delete's
-- and a rename's dry runs answer (a rename's counts its losers, where it
-- would otherwise rename them and roll back), a merge's, which must do the
-- merge to count its collisions, is refused by name
SELECT count(*) AS njobs_ro FROM dedup_jobs \gset
BEGIN READ ONLY;
SELECT state, rows_deleted FROM dedup_table('orders', '{ext_ref}', dry_run => true);
SELECT state, rows_renamed FROM dedup_table('orders', '{ext_ref}', action => 'rename', dry_run => true);
SAVEPOINT s;
SELECT state FROM dedup_table('orders', '{ext_ref}', action => 'merge', dry_run => true);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
\set VERBOSITY terse
SELECT * FROM dedup_table('orders', '{ext_ref}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT * FROM dedup_table('orders', '{ext_ref}', background => true);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT * FROM backfill_fk('orders', 'total', 'orders', '{ext_ref}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT dedup_rollback(1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT dedup_cancel(1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT dedup_pause(1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT dedup_resume(1);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
ROLLBACK;
SELECT (SELECT count(*) FROM dedup_jobs) = :njobs_ro AS no_new_job, same_data FROM tx.state();

RESET search_path;
