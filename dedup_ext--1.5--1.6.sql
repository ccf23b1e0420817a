-- dedup_ext 1.5 -> 1.6: dedup_progress's speed and eta count the time the
-- job has run since it last started, not the time since it first started;
-- a job whose committed row says it ended or paused shows as that; and
-- dedup_jobs names the job's unique index by identity.
\echo Use "ALTER EXTENSION dedup_ext UPDATE TO '1.6'" to load this file. \quit

-- Up to 1.5 rows_per_second divided every row a job had done by the time
-- since it first started, pauses and restarts included: a job paused for an
-- hour after ten seconds of work showed a speed 360 times too low, and an
-- eta as much too long.  Each run of a job (its start, a resume, a restart
-- after a crash) now notes when it began and how many rows were done
-- before it; the speed is that run's rows over that run's time.
ALTER TABLE dedup_job ADD COLUMN run_started_at timestamptz,
                      ADD COLUMN rows_before_run bigint;

-- dedup_jobs.unique_index names the index the job built by its identity
-- (unique_index_oid, noted since 1.3), as dedup_rollback and dedup_verify
-- find it: renamed or moved with its table, it is still shown (up to 1.5,
-- by its old name only, NULL once renamed).
CREATE OR REPLACE VIEW dedup_jobs WITH (security_barrier = true) AS
SELECT j.job_id, j.kind,
       CASE WHEN h.here THEN j.relation::pg_catalog.regclass END AS relation,
       j.params,
       CASE WHEN j.state OPERATOR(pg_catalog.=) 'running' AND j.background
                 AND (NOT h.here OR NOT @extschema@.dedup_job_alive(j.job_id))
            THEN 'interrupted' ELSE j.state END AS state,
       CASE WHEN h.here THEN pg_catalog.pg_get_userbyid(j.submitted_by) END AS submitted_by,
       j.submitted_at, j.started_at, j.finished_at,
       j.rows_done, j.rows_changed, j.error,
       j.rows_total, j.batches_done, j.strategy, j.duplicate_groups,
       j.rows_deleted, j.rows_renamed, j.refs_repointed,
       pg_catalog.to_regclass(j.archive_table) AS archive_table,
       CASE WHEN h.here THEN
            COALESCE((SELECT i.indexrelid::pg_catalog.regclass FROM pg_catalog.pg_index i
                       WHERE i.indexrelid OPERATOR(pg_catalog.=) j.unique_index_oid
                         AND i.indrelid OPERATOR(pg_catalog.=) j.relation),
                     pg_catalog.to_regclass(j.unique_index))
       END AS unique_index,
       j.target_job, j.rolled_back_by, j.relation_name, j.refs_removed, j.ref_archives,
       j.background, j.phase, j.checkpoint, j.passes, j.worker_pid, j.updated_at, j.retries,
       NOT h.here AS restored
  FROM @extschema@.dedup_job j,
       LATERAL (SELECT EXISTS (SELECT FROM @extschema@.dedup_job_here x
                                WHERE x.job_id OPERATOR(pg_catalog.=) j.job_id
                                  AND x.origin OPERATOR(pg_catalog.=) j.origin)) h(here)
 WHERE (h.here AND j.submitted_by OPERATOR(pg_catalog.=)
                   (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER))
    OR pg_catalog.pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE');

-- The live function returns the same two numbers from shared memory.  A
-- function's result columns cannot be changed in place, and the view reads
-- the function: both are made again, as pg_stat_statements' updates do.
ALTER EXTENSION dedup_ext DROP VIEW dedup_progress;
DROP VIEW dedup_progress;
ALTER EXTENSION dedup_ext DROP FUNCTION dedup_progress_live();
DROP FUNCTION dedup_progress_live();

-- Live progress from shared memory (empty unless the library is preloaded);
-- a role sees its own jobs, members of pg_read_all_stats all of them.
CREATE FUNCTION dedup_progress_live()
RETURNS TABLE (job_id bigint, pid integer, kind text, relation oid, phase text, state text,
               rows_total bigint, rows_done bigint, rows_changed bigint, batches_done bigint,
               started_at timestamptz, updated_at timestamptz, userid oid,
               run_started_at timestamptz, rows_before_run bigint)
AS 'MODULE_PATHNAME', 'dedup_progress_live' LANGUAGE C STRICT VOLATILE;

-- Jobs that run now (or wait): live counters where the library is
-- preloaded, the counters of the last committed batch otherwise.  A
-- restored row's job runs nowhere: it is history, not progress.  A worker
-- lets go of its job's live row just after the commit that ends the job (or
-- pauses it): the committed state wins over that row (up to 1.5 a job
-- dedup_wait had seen done could still show here, running).
CREATE VIEW dedup_progress WITH (security_barrier = true) AS
WITH live AS (
    SELECT l.* FROM @extschema@.dedup_progress_live() l
     WHERE NOT EXISTS (SELECT FROM @extschema@.dedup_job j
                        WHERE j.job_id OPERATOR(pg_catalog.=) l.job_id
                          AND j.state OPERATOR(pg_catalog.<>) 'running')
), p AS (
    SELECT l.job_id, l.pid, l.kind, l.relation::pg_catalog.regclass AS relation, l.phase, l.state,
           l.rows_total, l.rows_done, l.rows_changed, l.batches_done, l.started_at, l.updated_at,
           l.run_started_at, l.rows_before_run
      FROM live l
    UNION ALL
    SELECT j.job_id, CASE WHEN j.state OPERATOR(pg_catalog.=) 'running' THEN j.worker_pid END,
           j.kind, j.relation, j.phase, j.state,
           j.rows_total, j.rows_done, j.rows_changed, j.batches_done, j.started_at,
           COALESCE(j.updated_at, j.started_at, j.submitted_at),
           d.run_started_at, d.rows_before_run
      FROM @extschema@.dedup_jobs j
      JOIN @extschema@.dedup_job d ON d.job_id OPERATOR(pg_catalog.=) j.job_id
     WHERE j.state OPERATOR(pg_catalog.=) ANY ('{queued,running,paused,interrupted}'::text[])
       AND NOT j.restored
       AND NOT EXISTS (SELECT FROM live l WHERE l.job_id OPERATOR(pg_catalog.=) j.job_id)
), run AS (
    -- a job run before 1.6 noted no run: its first start, and all its rows
    SELECT p.*,
           COALESCE(p.run_started_at, p.started_at) AS since,
           p.rows_done OPERATOR(pg_catalog.-) COALESCE(p.rows_before_run, 0) AS run_rows
      FROM p
), r AS (
    SELECT run.*,
           CASE WHEN run.state OPERATOR(pg_catalog.=) 'running'
                     AND run.updated_at OPERATOR(pg_catalog.>) run.since AND run.run_rows OPERATOR(pg_catalog.>) 0
                THEN run.run_rows::pg_catalog.numeric OPERATOR(pg_catalog./)
                     pg_catalog.date_part('epoch', run.updated_at OPERATOR(pg_catalog.-) run.since)::pg_catalog.numeric
           END AS rps
      FROM run
)
SELECT r.job_id, r.pid, r.kind, r.relation, r.phase, r.state, r.rows_total, r.rows_done,
       r.rows_changed, r.batches_done,
       CASE WHEN r.rows_total OPERATOR(pg_catalog.>) 0
            THEN pg_catalog.round(LEAST(100::pg_catalog.numeric,
                     100 OPERATOR(pg_catalog.*) r.rows_done::pg_catalog.numeric
                     OPERATOR(pg_catalog./) r.rows_total::pg_catalog.numeric), 1)
       END AS percent,
       pg_catalog.round(r.rps, 1) AS rows_per_second,
       CASE WHEN r.rps OPERATOR(pg_catalog.>) 0 AND r.rows_total OPERATOR(pg_catalog.>=) r.rows_done
            THEN pg_catalog.make_interval(secs => pg_catalog.round(
                     (r.rows_total OPERATOR(pg_catalog.-) r.rows_done)::pg_catalog.numeric
                     OPERATOR(pg_catalog./) r.rps, 1)::double precision)
       END AS eta,
       r.started_at, r.updated_at
  FROM r;
GRANT SELECT ON dedup_progress TO PUBLIC;
