-- dedup_ext 1.4 -> 1.5: a job's row knows the database it was written in.
\echo Use "ALTER EXTENSION dedup_ext UPDATE TO '1.5'" to load this file. \quit

-- pg_dump keeps dedup_job's rows (a configuration table), and a restore
-- brings them into another database, or another cluster.  There the tables,
-- indexes and roles a row names by OID, and the rows of a merge's archive
-- named by ctid, are other objects or nothing: a rollback, a resumed job or
-- a submitter's check would act on whatever holds those numbers now (in a
-- new cluster, likely another of the restored tables).  So each job row
-- draws a random origin, and the extension's code notes it in
-- dedup_job_here, a table whose rows pg_dump leaves out (it is no
-- configuration table): no restore, data-only or with triggers disabled,
-- can bring a row there, while pg_upgrade, a database copied from a
-- template and a physical copy (a standby, a base backup), which keep those
-- OIDs and ctids, keep it.  A job row without its note is history here:
-- shown to superusers and pg_read_all_stats only, never run, rolled back or
-- verified.

-- The rows already here get their origin and note from one UPDATE and one
-- INSERT below; under REPEATABLE READ or SERIALIZABLE their snapshot would
-- miss a job committed while this update waited for its lock, which would
-- then count as restored for good (however few jobs that snapshot shows).
-- A fresh install, whose job id sequence this transaction created, has no
-- jobs to miss.
DO $$
BEGIN
  IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
     AND (SELECT c.xmin FROM pg_catalog.pg_class c
           WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.dedup_job_job_id_seq'::pg_catalog.regclass)
         OPERATOR(pg_catalog.<>) pg_catalog.xid(pg_catalog.pg_current_xact_id()) THEN
    RAISE EXCEPTION 'dedup_ext can be updated to 1.5 only at READ COMMITTED'
      USING ERRCODE = 'invalid_transaction_state',
            DETAIL = 'The update marks the jobs already here as this database''s own; at '
                     || pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
                     || ' it would miss those committed while it waits for its lock.',
            HINT = 'Run ALTER EXTENSION dedup_ext UPDATE in a READ COMMITTED transaction.';
  END IF;
END $$;

CREATE TABLE dedup_job_here (
    job_id  bigint PRIMARY KEY,
    origin  uuid NOT NULL
);
REVOKE ALL ON dedup_job_here FROM PUBLIC;
ALTER TABLE dedup_job ADD COLUMN origin uuid;
-- the jobs already here were written here (a restore of 1.4's dump cannot
-- be told apart any more)
UPDATE dedup_job SET origin = pg_catalog.gen_random_uuid();
INSERT INTO dedup_job_here SELECT j.job_id, j.origin FROM dedup_job j;

-- A job's orphan rows carry its origin: those a data-only restore brings
-- for a job id taken here (its job rows fail on it) name another origin,
-- and are not this job's.
ALTER TABLE dedup_orphan ADD COLUMN origin uuid;
UPDATE dedup_orphan o SET origin = j.origin FROM dedup_job j
 WHERE j.job_id OPERATOR(pg_catalog.=) o.job_id;

CREATE OR REPLACE VIEW dedup_orphans WITH (security_barrier = true) AS
SELECT o.job_id, o.row_id, o.key_values, o.reason
  FROM @extschema@.dedup_orphan o
 WHERE o.job_id IN (SELECT j.job_id FROM @extschema@.dedup_jobs j)
   AND o.origin IS NOT DISTINCT FROM (SELECT j.origin FROM @extschema@.dedup_job j
                                       WHERE j.job_id OPERATOR(pg_catalog.=) o.job_id);

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
       CASE WHEN h.here THEN pg_catalog.to_regclass(j.unique_index) END AS unique_index,
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

-- a restored row's job runs nowhere: it is history, not progress
CREATE OR REPLACE VIEW dedup_progress WITH (security_barrier = true) AS
WITH live AS (
    SELECT l.* FROM @extschema@.dedup_progress_live() l
), p AS (
    SELECT l.job_id, l.pid, l.kind, l.relation::pg_catalog.regclass AS relation, l.phase, l.state,
           l.rows_total, l.rows_done, l.rows_changed, l.batches_done, l.started_at, l.updated_at
      FROM live l
    UNION ALL
    SELECT j.job_id, CASE WHEN j.state OPERATOR(pg_catalog.=) 'running' THEN j.worker_pid END,
           j.kind, j.relation, j.phase, j.state,
           j.rows_total, j.rows_done, j.rows_changed, j.batches_done, j.started_at,
           COALESCE(j.updated_at, j.started_at, j.submitted_at)
      FROM @extschema@.dedup_jobs j
     WHERE j.state OPERATOR(pg_catalog.=) ANY ('{queued,running,paused,interrupted}'::text[])
       AND NOT j.restored
       AND NOT EXISTS (SELECT FROM live l WHERE l.job_id OPERATOR(pg_catalog.=) j.job_id)
), r AS (
    SELECT p.*,
           CASE WHEN p.state OPERATOR(pg_catalog.=) 'running'
                     AND p.updated_at OPERATOR(pg_catalog.>) p.started_at AND p.rows_done OPERATOR(pg_catalog.>) 0
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
