-- dedup_ext 1.0 -> 1.1: background jobs (issue 4).
\echo Use "ALTER EXTENSION dedup_ext UPDATE TO '1.1'" to load this file. \quit

-- What a background job needs to resume where it stopped: its phase, the
-- last batch it committed (checkpoint), the pass it is in, its work table,
-- and the request a control function left for it.
ALTER TABLE dedup_job
    ADD COLUMN background  boolean NOT NULL DEFAULT false,
    ADD COLUMN phase       text,
    ADD COLUMN checkpoint  bigint NOT NULL DEFAULT 0,
    ADD COLUMN passes      integer NOT NULL DEFAULT 0,
    ADD COLUMN work_table  text,
    ADD COLUMN control     text CHECK (control IN ('pause', 'cancel')),
    ADD COLUMN worker_pid  integer,
    ADD COLUMN updated_at  timestamptz,
    ADD COLUMN retries     bigint NOT NULL DEFAULT 0;
CREATE INDEX dedup_job_queued ON dedup_job (job_id) WHERE state = 'queued';

-- A background job is 'running' in the table while a worker holds its
-- advisory lock; one whose worker is gone (server stopped, worker killed)
-- shows as 'interrupted' until the launcher or dedup_resume picks it up.
-- The lock is an advisory lock of the job's database with objsubid 25700
-- (SQL-level advisory locks use 1 and 2, so none can be mistaken for it).
CREATE FUNCTION dedup_job_alive(job_id bigint) RETURNS boolean
LANGUAGE sql STABLE STRICT
AS $$
SELECT EXISTS (
    SELECT FROM pg_catalog.pg_locks l
     WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
       AND l.granted
       AND l.objsubid OPERATOR(pg_catalog.=) 25700
       AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                                                WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
       AND l.classid OPERATOR(pg_catalog.=) ($1 OPERATOR(pg_catalog.>>) 32)::pg_catalog.oid
       AND l.objid OPERATOR(pg_catalog.=) ($1 OPERATOR(pg_catalog.&) 4294967295)::pg_catalog.oid)
$$;

CREATE OR REPLACE VIEW dedup_jobs AS
SELECT j.job_id, j.kind,
       j.relation::pg_catalog.regclass AS relation,
       j.params,
       CASE WHEN j.state OPERATOR(pg_catalog.=) 'running' AND j.background
                 AND NOT @extschema@.dedup_job_alive(j.job_id)
            THEN 'interrupted' ELSE j.state END AS state,
       pg_catalog.pg_get_userbyid(j.submitted_by) AS submitted_by,
       j.submitted_at, j.started_at, j.finished_at,
       j.rows_done, j.rows_changed, j.error,
       j.rows_total, j.batches_done, j.strategy, j.duplicate_groups,
       j.rows_deleted, j.rows_renamed, j.refs_repointed,
       pg_catalog.to_regclass(j.archive_table) AS archive_table,
       pg_catalog.to_regclass(j.unique_index) AS unique_index,
       j.target_job, j.rolled_back_by, j.relation_name, j.refs_removed, j.ref_archives,
       j.background, j.phase, j.checkpoint, j.passes, j.worker_pid, j.updated_at, j.retries
  FROM @extschema@.dedup_job j
 WHERE j.submitted_by = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)
    OR pg_catalog.pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE');

-- Live progress from shared memory (empty unless the library is preloaded);
-- a role sees its own jobs, members of pg_read_all_stats all of them.
CREATE FUNCTION dedup_progress_live()
RETURNS TABLE (job_id bigint, pid integer, kind text, relation oid, phase text, state text,
               rows_total bigint, rows_done bigint, rows_changed bigint, batches_done bigint,
               started_at timestamptz, updated_at timestamptz, userid oid)
AS 'MODULE_PATHNAME', 'dedup_progress_live' LANGUAGE C STRICT VOLATILE;

-- Jobs that run now (or wait): live counters where the library is
-- preloaded, the counters of the last committed batch otherwise.
CREATE VIEW dedup_progress AS
WITH live AS (
    SELECT l.* FROM @extschema@.dedup_progress_live() l
), p AS (
    SELECT l.job_id, l.pid, l.kind, l.relation::pg_catalog.regclass AS relation, l.phase, l.state,
           l.rows_total, l.rows_done, l.rows_changed, l.batches_done, l.started_at, l.updated_at
      FROM live l
    UNION ALL
    SELECT j.job_id, j.worker_pid, j.kind, j.relation, j.phase, j.state,
           j.rows_total, j.rows_done, j.rows_changed, j.batches_done, j.started_at,
           COALESCE(j.updated_at, j.started_at, j.submitted_at)
      FROM @extschema@.dedup_jobs j
     WHERE j.state OPERATOR(pg_catalog.=) ANY ('{queued,running,paused,interrupted}'::text[])
       AND NOT EXISTS (SELECT FROM live l WHERE l.job_id OPERATOR(pg_catalog.=) j.job_id)
), r AS (
    SELECT p.*,
           CASE WHEN p.updated_at OPERATOR(pg_catalog.>) p.started_at AND p.rows_done OPERATOR(pg_catalog.>) 0
                THEN p.rows_done::pg_catalog.numeric OPERATOR(pg_catalog./)
                     pg_catalog.date_part('epoch', p.updated_at OPERATOR(pg_catalog.-) p.started_at)::pg_catalog.numeric
           END AS rps
      FROM p
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

CREATE FUNCTION dedup_wait(job_id bigint, timeout interval DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'dedup_wait' LANGUAGE C CALLED ON NULL INPUT;
CREATE FUNCTION dedup_cancel(job_id bigint) RETURNS boolean
AS 'MODULE_PATHNAME', 'dedup_cancel' LANGUAGE C CALLED ON NULL INPUT;
CREATE FUNCTION dedup_pause(job_id bigint) RETURNS boolean
AS 'MODULE_PATHNAME', 'dedup_pause' LANGUAGE C CALLED ON NULL INPUT;
CREATE FUNCTION dedup_resume(job_id bigint) RETURNS boolean
AS 'MODULE_PATHNAME', 'dedup_resume' LANGUAGE C CALLED ON NULL INPUT;
