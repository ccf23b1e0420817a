--
-- upgrade: a 1.3 install, with an archive of a non-superuser's table, updated
-- to the current version.  1.4 hands archives to the extension's owner (the
-- table's owner keeps reading them), makes the job views security barriers,
-- and runs the functions that write row ids with exact float output; 1.5
-- marks the jobs already there as the database's own (not restored from a
-- dump of another database: t/009_dump.pl).  Runs first, and drops the
-- extension again for install.
--
-- 1.0 has no background jobs: the library refuses them there, saying so
CREATE EXTENSION dedup_ext VERSION '1.0';
CREATE TABLE up_10 (id int PRIMARY KEY, k int);
\set VERBOSITY sqlstate
SELECT job_id FROM dedup_table('up_10', '{k}', background => true);
\set VERBOSITY default
SELECT job_id FROM dedup_table('up_10', '{k}', background => true);
DROP TABLE up_10;
DROP EXTENSION dedup_ext;

CREATE EXTENSION dedup_ext VERSION '1.3';
DROP ROLE IF EXISTS regress_up_owner;
CREATE ROLE regress_up_owner;
CREATE SCHEMA up AUTHORIZATION regress_up_owner;
SET ROLE regress_up_owner;
CREATE TABLE up.t (id int PRIMARY KEY, k text);
INSERT INTO up.t VALUES (1, 'a'), (2, 'a');
SELECT job_id AS jup, archive_table AS aup FROM dedup_table('up.t', '{k}') \gset
CREATE TABLE up.s (id int PRIMARY KEY, k text);
INSERT INTO up.s VALUES (1, 'a'), (2, 'a');
SELECT job_id AS jups, archive_table AS aups FROM dedup_table('up.s', '{k}') \gset
RESET ROLE;
-- as 1.3 left them (this library already writes archives as 1.4 does): the
-- table's owner's, who granted one to PUBLIC and gave the other a
-- statistics object (whose expressions ANALYZE would run as the new owner)
ALTER TABLE :aup OWNER TO regress_up_owner;
ALTER TABLE :aups OWNER TO regress_up_owner;
SET ROLE regress_up_owner;
GRANT SELECT ON :aup TO PUBLIC;
CREATE STATISTICS up.s_stats ON (id + 1), k FROM :aups;
RESET ROLE;

-- over jobs, the update to 1.5 runs at READ COMMITTED only (its snapshot
-- must see every job committed while it waits for its lock)
BEGIN ISOLATION LEVEL REPEATABLE READ;
\set VERBOSITY sqlstate
ALTER EXTENSION dedup_ext UPDATE;
\set VERBOSITY default
ROLLBACK;
ALTER EXTENSION dedup_ext UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'dedup_ext';
SELECT relowner = (SELECT extowner FROM pg_extension WHERE extname = 'dedup_ext') AS owned_by_extension,
       has_table_privilege('regress_up_owner', oid, 'SELECT') AS owner_reads,
       has_table_privilege('regress_up_owner', oid, 'INSERT') AS owner_adds,
       has_table_privilege('regress_up_owner', oid, 'DELETE') AS owner_deletes
  FROM pg_class WHERE oid = :'aup'::regclass;
SELECT has_table_privilege('public', :'aup', 'SELECT') AS public_reads;
-- the one with a statistics object was left to its owner (WARNING above),
-- and its rollback is refused
SELECT pg_get_userbyid(relowner) AS left_to FROM pg_class WHERE oid = :'aups'::regclass;
\set VERBOSITY terse
SELECT dedup_rollback(:jups);
\set VERBOSITY default
SELECT relname, reloptions FROM pg_class
 WHERE relname IN ('dedup_jobs', 'dedup_orphans', 'dedup_progress') ORDER BY relname;
SELECT p.proname, p.proconfig
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dedup_ext'
 WHERE p.proconfig IS NOT NULL ORDER BY p.proname;
-- the jobs written before 1.5 are this database's own
SELECT job_id = :jup AS jup, restored, relation FROM dedup_jobs ORDER BY job_id;
SELECT (SELECT count(*) FROM dedup_job_here) = (SELECT count(*) FROM dedup_job) AS all_noted;
-- the owner rolls its job back as before
SET ROLE regress_up_owner;
SELECT dedup_rollback(:jup) AS restored;
RESET ROLE;

SET client_min_messages = warning;
DROP EXTENSION dedup_ext CASCADE;
DROP SCHEMA up CASCADE;
RESET client_min_messages;
DROP ROLE regress_up_owner;
