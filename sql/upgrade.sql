--
-- upgrade: a 1.3 install, with an archive of a non-superuser's table, updated
-- to the current version.  1.4 hands archives to the extension's owner (the
-- table's owner keeps reading them), makes the job views security barriers,
-- and runs the functions that write row ids with exact float output.  Runs
-- first, and drops the extension again for install.
--
CREATE EXTENSION dedup_ext VERSION '1.3';
DROP ROLE IF EXISTS regress_up_owner;
CREATE ROLE regress_up_owner;
CREATE SCHEMA up AUTHORIZATION regress_up_owner;
SET ROLE regress_up_owner;
CREATE TABLE up.t (id int PRIMARY KEY, k text);
INSERT INTO up.t VALUES (1, 'a'), (2, 'a');
SELECT job_id AS jup, archive_table AS aup FROM dedup_table('up.t', '{k}') \gset
RESET ROLE;
-- as 1.3 left it (this library already writes archives as 1.4 does)
ALTER TABLE :aup OWNER TO regress_up_owner;

ALTER EXTENSION dedup_ext UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'dedup_ext';
SELECT relowner = (SELECT extowner FROM pg_extension WHERE extname = 'dedup_ext') AS owned_by_extension,
       has_table_privilege('regress_up_owner', oid, 'SELECT') AS owner_reads,
       has_table_privilege('regress_up_owner', oid, 'INSERT') AS owner_adds,
       has_table_privilege('regress_up_owner', oid, 'DELETE') AS owner_deletes
  FROM pg_class WHERE oid = :'aup'::regclass;
SELECT relname, reloptions FROM pg_class
 WHERE relname IN ('dedup_jobs', 'dedup_orphans', 'dedup_progress') ORDER BY relname;
SELECT p.proname, p.proconfig
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dedup_ext'
 WHERE p.proconfig IS NOT NULL ORDER BY p.proname;
-- the owner rolls its job back as before
SET ROLE regress_up_owner;
SELECT dedup_rollback(:jup) AS restored;
RESET ROLE;

SET client_min_messages = warning;
DROP EXTENSION dedup_ext CASCADE;
DROP SCHEMA up CASCADE;
RESET client_min_messages;
DROP ROLE regress_up_owner;
