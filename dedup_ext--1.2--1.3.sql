-- dedup_ext 1.2 -> 1.3: dedup_progress shows a pid only for a job that a
-- process runs now (an interrupted job's last worker is gone; dedup_jobs
-- keeps its pid, to find it in the server log), and a speed and an eta only
-- for a running job (a paused one has neither).
\echo Use "ALTER EXTENSION dedup_ext UPDATE TO '1.3'" to load this file. \quit

CREATE OR REPLACE VIEW dedup_progress AS
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

-- The unique index a job built, by identity: dedup_rollback drops that index
-- whatever its name is now (ALTER INDEX ... RENAME, ALTER TABLE ... RENAME
-- CONSTRAINT), and never another index that took its name.  Noted when the
-- index is there: as a foreground job ends, as a background job's index
-- becomes valid.  Jobs written before have NULL there, and their rollback
-- finds the index by name.
ALTER TABLE dedup_job ADD COLUMN unique_index_oid oid;
