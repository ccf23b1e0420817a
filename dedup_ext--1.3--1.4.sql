-- dedup_ext 1.3 -> 1.4: the job views are security barriers, and archives
-- belong to the extension's owner.
\echo Use "ALTER EXTENSION dedup_ext UPDATE TO '1.4'" to load this file. \quit

-- Each view shows a role its own jobs only.  Without the barrier a function
-- of the caller's in a WHERE clause (cheap, leaky: RAISE NOTICE of its
-- argument) could be run on every row before that filter, and print other
-- roles' parameters, errors and orphan keys.
ALTER VIEW @extschema@.dedup_jobs SET (security_barrier = true);
ALTER VIEW @extschema@.dedup_orphans SET (security_barrier = true);
ALTER VIEW @extschema@.dedup_progress SET (security_barrier = true);

-- An archive's owner could change its column types (to one whose cast runs
-- code of theirs) or make it a view, and a rollback or dedup_verify run by a
-- superuser would read it.  Archives made from now on belong to the
-- extension's owner, and the table's owner may read and add rows to them;
-- the same for those made before: the tables dedup_job names as archives
-- (not the work tables of jobs in progress, which their worker truncates as
-- the submitter).  One that its owner may have made unsafe to read as
-- another role keeps its owner (a WARNING names it; a rollback or
-- dedup_verify refuses it): no longer a plain table, with rules, triggers,
-- row-level security, an index or statistics object (whose expressions
-- ANALYZE runs), or a column whose type is no longer the table's.  The
-- others lose every grant but the table owner's and the job submitter's
-- (SELECT, and INSERT while the job is in progress), and their columns of types users made get no statistics (ANALYZE, as the
-- new owner, would run those types' functions).
DO $$
DECLARE
  a record;
  g record;
  col record;
  extowner name := (SELECT pg_catalog.pg_get_userbyid(e.extowner) FROM pg_catalog.pg_extension e
                     WHERE e.extname OPERATOR(pg_catalog.=) 'dedup_ext');
BEGIN
  FOR a IN SELECT c.oid, c.oid::pg_catalog.regclass AS archive, pg_catalog.pg_get_userbyid(c.relowner) AS owner,
                  (SELECT r.rolname FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) j.submitted_by) AS writer,
                  j.state OPERATOR(pg_catalog.=) ANY ('{queued,running,paused,interrupted}'::pg_catalog.text[]) AS live,
                  c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relhasrules AND NOT c.relhastriggers
                  AND NOT c.relrowsecurity AND NOT c.relhasindex
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_statistic_ext s
                                   WHERE s.stxrelid OPERATOR(pg_catalog.=) c.oid)
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute x
                                    JOIN pg_catalog.pg_attribute y
                                      ON y.attrelid OPERATOR(pg_catalog.=) x2.src
                                     AND y.attname OPERATOR(pg_catalog.=) x.attname AND NOT y.attisdropped
                                   WHERE x.attrelid OPERATOR(pg_catalog.=) c.oid AND x.attnum OPERATOR(pg_catalog.>) 0
                                     AND NOT x.attisdropped
                                     AND x.atttypid OPERATOR(pg_catalog.<>) y.atttypid) AS intact
             FROM @extschema@.dedup_job j,
                  -- each archive, and the table whose rows it holds
                  LATERAL (SELECT j.archive_table::pg_catalog.text, j.relation::pg_catalog.oid
                           UNION ALL SELECT e OPERATOR(pg_catalog.->>) 'archive',
                                  (e OPERATOR(pg_catalog.->>) 'oid')::pg_catalog.oid
                             FROM pg_catalog.jsonb_array_elements(COALESCE(j.ref_archives, '[]')) e
                           UNION ALL SELECT j.undo OPERATOR(pg_catalog.->>) f, j.relation::pg_catalog.oid
                             FROM pg_catalog.unnest('{linked,deleted}'::pg_catalog.text[]) f
                           UNION ALL SELECT j.undo OPERATOR(pg_catalog.->>) 'created',
                                  (j.undo OPERATOR(pg_catalog.->>) 'parent_oid')::pg_catalog.oid) x2(n, src),
                  pg_catalog.pg_class c
            WHERE x2.n IS NOT NULL AND c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(x2.n)
              AND c.relowner OPERATOR(pg_catalog.<>) (SELECT e.extowner FROM pg_catalog.pg_extension e
                                                        WHERE e.extname OPERATOR(pg_catalog.=) 'dedup_ext')
  LOOP
    IF NOT a.intact THEN
      RAISE WARNING 'archive table % is not as dedup_ext made it (a view, or it has rules, triggers, row-level security, an index, a statistics object or a column of another type than its table''s): left to its owner %, its job cannot be rolled back', a.archive, a.owner;
      CONTINUE;
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', a.archive, extowner);
    FOR g IN SELECT DISTINCT acl.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) acl
              WHERE c.oid OPERATOR(pg_catalog.=) a.oid
                AND acl.grantee OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r
                                                          WHERE r.rolname OPERATOR(pg_catalog.=) extowner)
    LOOP
      IF g.grantee OPERATOR(pg_catalog.=) 0 THEN
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC CASCADE', a.archive);
      ELSE
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %I CASCADE', a.archive, pg_catalog.pg_get_userbyid(g.grantee));
      END IF;
    END LOOP;
    -- INSERT only while the job may still write to it
    EXECUTE pg_catalog.format('GRANT %s ON %s TO %I',
                              CASE WHEN a.live THEN 'SELECT, INSERT' ELSE 'SELECT' END, a.archive, a.owner);
    -- the job's submitter (who wrote a merge's re-pointed rows of another role's table)
    IF a.writer IS NOT NULL THEN
      EXECUTE pg_catalog.format('GRANT %s ON %s TO %I',
                                CASE WHEN a.live THEN 'SELECT, INSERT' ELSE 'SELECT' END, a.archive, a.writer);
    END IF;
    FOR col IN SELECT x.attname FROM pg_catalog.pg_attribute x
                WHERE x.attrelid OPERATOR(pg_catalog.=) a.oid AND x.attnum OPERATOR(pg_catalog.>) 0
                  AND NOT x.attisdropped AND x.atttypid OPERATOR(pg_catalog.>=) 16384
    LOOP
      EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS 0', a.archive, col.attname);
    END LOOP;
  END LOOP;
END $$;

-- A row_id or key holds float values as text; with extra_float_digits at 0
-- or below that text rounds (two rows of a float8 primary key could get the
-- same row_id, and a rollback could not find a row by it).  The functions
-- that write them run with the exact, shortest output.
DO $$
DECLARE
  f pg_catalog.regprocedure;
BEGIN
  FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
            WHERE p.pronamespace OPERATOR(pg_catalog.=) '@extschema@'::pg_catalog.regnamespace
              AND p.proname OPERATOR(pg_catalog.=) ANY ('{dedup_table,dedup_preview,dedup_groups,backfill_fk,dedup_verify,dedup_rollback}'::pg_catalog.name[])
  LOOP
    EXECUTE pg_catalog.format('ALTER FUNCTION %s SET extra_float_digits = 1', f);
  END LOOP;
END $$;

-- The archives' space, given back by their job's submitter (who no longer
-- owns them): the job can no longer be rolled back.
CREATE FUNCTION @extschema@.dedup_drop_archive(job_id bigint) RETURNS integer
AS 'MODULE_PATHNAME', 'dedup_drop_archive' LANGUAGE C CALLED ON NULL INPUT;
