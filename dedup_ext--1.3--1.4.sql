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
-- extension's owner, the table's owner may read and add rows to them; the
-- same for those made before.
DO $$
DECLARE
  a record;
BEGIN
  FOR a IN SELECT c.oid::pg_catalog.regclass AS archive, pg_catalog.pg_get_userbyid(c.relowner) AS owner
             FROM pg_catalog.pg_class c
            WHERE c.relnamespace OPERATOR(pg_catalog.=) 'dedup_archive'::pg_catalog.regnamespace
              AND c.relkind OPERATOR(pg_catalog.=) 'r'
              AND c.relowner OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r
                                                       WHERE r.rolname OPERATOR(pg_catalog.=) current_user)
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', a.archive, current_user);
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
