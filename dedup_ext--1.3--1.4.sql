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
-- the submitter).  One that is no longer a plain table, or has rules,
-- triggers or row-level security, keeps its owner; a rollback or
-- dedup_verify refuses it.
DO $$
DECLARE
  a record;
  extowner name := (SELECT pg_catalog.pg_get_userbyid(e.extowner) FROM pg_catalog.pg_extension e
                     WHERE e.extname OPERATOR(pg_catalog.=) 'dedup_ext');
BEGIN
  FOR a IN SELECT c.oid::pg_catalog.regclass AS archive, pg_catalog.pg_get_userbyid(c.relowner) AS owner,
                  c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relhasrules AND NOT c.relhastriggers
                  AND NOT c.relrowsecurity AS intact
             FROM pg_catalog.pg_class c
            WHERE c.oid OPERATOR(pg_catalog.=) ANY (ARRAY(
                    SELECT pg_catalog.to_regclass(n) FROM @extschema@.dedup_job j,
                    LATERAL (SELECT j.archive_table::pg_catalog.text
                             UNION ALL SELECT e OPERATOR(pg_catalog.->>) 'archive'
                               FROM pg_catalog.jsonb_array_elements(COALESCE(j.ref_archives, '[]')) e
                             UNION ALL SELECT j.undo OPERATOR(pg_catalog.->>) f
                               FROM pg_catalog.unnest('{linked,deleted,created}'::pg_catalog.text[]) f) x(n)
                     WHERE n IS NOT NULL))
              AND c.relowner OPERATOR(pg_catalog.<>) (SELECT e.extowner FROM pg_catalog.pg_extension e
                                                        WHERE e.extname OPERATOR(pg_catalog.=) 'dedup_ext')
  LOOP
    IF NOT a.intact THEN
      RAISE WARNING 'archive table % is not as dedup_ext made it (a view, or it has rules, triggers or row-level security): left to its owner %, its job cannot be rolled back', a.archive, a.owner;
      CONTINUE;
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', a.archive, extowner);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO %I', a.archive, a.owner);
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
