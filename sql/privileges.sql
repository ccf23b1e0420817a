--
-- privileges: only the table's owner (or a member of the owning role) may change it;
-- a non-superuser owner can use every function; a role sees and controls only its
-- own jobs (superusers and pg_read_all_stats see all); archives are not readable by
-- other roles; filter/keep run with the caller's rights.
--
DROP ROLE IF EXISTS regress_owner;
DROP ROLE IF EXISTS regress_other;
DROP ROLE IF EXISTS regress_member;
DROP ROLE IF EXISTS regress_stats;
CREATE ROLE regress_owner;
CREATE ROLE regress_other;
CREATE ROLE regress_member IN ROLE regress_owner;
CREATE ROLE regress_stats IN ROLE pg_read_all_stats;

-- a helper owned by the superuser: run q, show SQLSTATE and message instead of failing;
-- numbers in messages (job ids, archive names) are shown as N
CREATE SCHEMA priv_util;
GRANT USAGE ON SCHEMA priv_util TO PUBLIC;
CREATE FUNCTION priv_util.try(q text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  code := 'OK';
EXCEPTION WHEN OTHERS THEN
  code := SQLSTATE;
  message := regexp_replace(SQLERRM, '[0-9]+', 'N', 'g');
END $$;

CREATE SCHEMA priv AUTHORIZATION regress_owner;
GRANT USAGE, CREATE ON SCHEMA priv TO regress_other;
GRANT USAGE ON SCHEMA priv TO regress_stats;
SET search_path = priv, public;

--
-- the owner, not a superuser, uses every function
--
SET ROLE regress_owner;
SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
CREATE TABLE priv.acct (id int PRIMARY KEY, email text NOT NULL, name text);
INSERT INTO priv.acct SELECT g, 'u' || g % 4 || '@example.com', 'name ' || g
  FROM generate_series(1, 12) g;
CREATE TABLE priv.secret (id int PRIMARY KEY, token text NOT NULL);
INSERT INTO priv.secret SELECT g, 'tok' || g % 2 FROM generate_series(1, 6) g;
-- regress_other may read and write acct, but does not own it
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON priv.acct TO regress_other;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) AS acct_md5 FROM priv.acct a \gset
SELECT md5(string_agg(s::text, ',' ORDER BY id)) AS secret_md5 FROM priv.secret s \gset

-- expect 12 rows, 4 groups of 3, 8 duplicate rows
SELECT * FROM dedup_audit('acct', '{email}');
SELECT key_values, group_rows FROM dedup_groups('acct', '{email}') ORDER BY key_values::text;
SELECT count(*) FROM dedup_preview('acct', '{email}');
SELECT job_id IS NULL AS no_job_id, state, rows_deleted
  FROM dedup_table('acct', '{email}', dry_run => true);
CREATE TEMP TABLE r_owner AS
SELECT * FROM dedup_table('acct', '{email}', add_unique => true);
SELECT job_id AS jid_owner, archive_table AS arch_owner FROM r_owner \gset
SELECT state, duplicate_groups, rows_deleted, unique_index FROM r_owner;
SELECT id, email FROM priv.acct ORDER BY id;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid_owner);
SELECT kind, state, submitted_by FROM dedup_jobs WHERE job_id = :jid_owner;
-- a backfill of its own, with an orphan, verified by the owner too
CREATE TABLE priv.kw (id int PRIMARY KEY, name text UNIQUE);
INSERT INTO priv.kw VALUES (1, 'a'), (2, 'b');
CREATE TABLE priv.tag (id int PRIMARY KEY, name text, kw_id int);
INSERT INTO priv.tag VALUES (1, 'a'), (2, 'b'), (3, 'zz');
SELECT job_id AS jid_bf FROM backfill_fk('tag', 'kw_id', 'kw', '{name}') \gset
SELECT check_name, ok, detail FROM dedup_verify(:jid_bf) ORDER BY check_name;
-- the archive: owned by the extension's owner, readable to the table's
-- owner and its members only; its owner may not change it (a column type
-- whose cast runs its code, a view: a superuser's rollback or dedup_verify
-- would read it)
SELECT relowner = (SELECT extowner FROM pg_extension WHERE extname = 'dedup_ext') AS archive_owned_by_extension
  FROM pg_class WHERE oid = :'arch_owner'::regclass;
SELECT * FROM priv_util.try(format('ALTER TABLE %s ALTER COLUMN email TYPE varchar', :'arch_owner'));
SELECT * FROM priv_util.try(format('CREATE RULE "_RETURN" AS ON SELECT TO %s DO INSTEAD SELECT * FROM priv.acct', :'arch_owner'));
SELECT count(*) FROM :arch_owner;
SELECT r AS role, has_table_privilege(r, :'arch_owner', 'SELECT') AS can_read
  FROM unnest(ARRAY['regress_owner', 'regress_member', 'regress_other', 'regress_stats', 'public']) r
 ORDER BY r;
-- and, the job over, no one adds rows to it (a rollback would put them into
-- the table)
SELECT has_table_privilege('regress_owner', :'arch_owner', 'INSERT') AS owner_adds;
-- the job table itself is not for users
SELECT * FROM priv_util.try($$SELECT count(*) FROM dedup_job$$);
SELECT * FROM priv_util.try($$UPDATE dedup_job SET state = 'failed'$$);
SELECT * FROM priv_util.try($$DELETE FROM dedup_job$$);

--
-- another role: reads what it may read, changes nothing it does not own
--
SET ROLE regress_other;
-- it may SELECT acct, so it may audit it
SELECT total_rows, duplicate_groups FROM dedup_audit('acct', '{email}');
-- but not secret (no SELECT): the functions must not read it for it
SELECT * FROM priv_util.try($$SELECT * FROM dedup_audit('priv.secret', '{token}')$$);
SELECT * FROM priv_util.try($$SELECT * FROM dedup_groups('priv.secret', '{token}')$$);
SELECT * FROM priv_util.try($$SELECT * FROM dedup_preview('priv.secret', '{token}')$$);
-- not the owner: 42501, even with DELETE/UPDATE/TRUNCATE granted
SELECT * FROM priv_util.try($$SELECT * FROM dedup_table('priv.acct', '{name}')$$);
SELECT * FROM priv_util.try($$SELECT * FROM dedup_table('priv.acct', '{name}', action => 'rename')$$);
SELECT * FROM priv_util.try($$SELECT * FROM dedup_table('priv.secret', '{token}')$$);
SELECT * FROM priv_util.try($$SELECT * FROM dedup_table('priv.acct', '{name}', dry_run => true)$$);
-- the owner's job is neither visible nor controllable
SELECT count(*) AS visible FROM dedup_jobs WHERE job_id = :jid_owner;
SELECT count(*) AS visible_jobs FROM dedup_jobs;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_owner));
SELECT * FROM priv_util.try(format('SELECT * FROM dedup_verify(%s)', :jid_owner));
-- nor the archive
SELECT * FROM priv_util.try(format('SELECT count(*) FROM %s', :'arch_owner'));
SELECT * FROM priv_util.try(format('DROP TABLE %s', :'arch_owner'));
-- its own table: every function works, filter and keep run as regress_other
CREATE TABLE priv.mine (id int PRIMARY KEY, tag text NOT NULL);
INSERT INTO priv.mine SELECT g, 't' || g % 3 FROM generate_series(1, 9) g;
SELECT total_rows, duplicate_rows
  FROM dedup_audit('mine', '{tag}', filter => 'current_user = ''regress_other''');
SELECT * FROM priv_util.try($$SELECT * FROM dedup_audit('priv.mine', '{tag}', filter => 'EXISTS (SELECT 1 FROM priv.secret)')$$);
SELECT * FROM priv_util.try($$SELECT * FROM dedup_table('priv.mine', '{tag}', keep => '(SELECT min(s.id) FROM priv.secret s WHERE s.id > mine.id)')$$);
CREATE TEMP TABLE r_other AS
SELECT * FROM dedup_table('mine', '{tag}', action => 'rename',
                          filter => 'current_user = ''regress_other''');
SELECT job_id AS jid_other, archive_table AS arch_other FROM r_other \gset
SELECT state, rows_renamed FROM r_other;
SELECT id, tag FROM priv.mine ORDER BY id;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid_other);
SELECT kind, state, submitted_by FROM dedup_jobs WHERE job_id = :jid_other;
SELECT count(*) AS visible_jobs FROM dedup_jobs;
SELECT relowner = (SELECT extowner FROM pg_extension WHERE extname = 'dedup_ext') AS archive_owned_by_extension
  FROM pg_class WHERE oid = :'arch_other'::regclass;
SELECT count(*) FROM :arch_other;

--
-- the owner again: does not see regress_other's job; undoes its own job
--
SET ROLE regress_owner;
SELECT count(*) AS visible FROM dedup_jobs WHERE job_id = :jid_other;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_other));
SELECT * FROM priv_util.try(format('SELECT count(*) FROM %s', :'arch_other'));
SELECT dedup_rollback(:jid_owner) AS restored;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM priv.acct a;
SELECT kind, state, submitted_by FROM dedup_jobs
 WHERE job_id = :jid_owner OR target_job = :jid_owner ORDER BY kind;

--
-- a member of the owning role may change the table; the job is its own
--
SET ROLE regress_member;
CREATE TEMP TABLE r_member AS
SELECT * FROM dedup_table('acct', '{email}', keep => 'last', add_unique => true);
SELECT job_id AS jid_member, archive_table AS arch_member FROM r_member \gset
SELECT state, rows_deleted, unique_index FROM r_member;
SELECT id FROM priv.acct ORDER BY id;
SELECT kind, state, submitted_by FROM dedup_jobs WHERE job_id = :jid_member;
SELECT count(*) AS visible FROM dedup_jobs WHERE job_id IN (:jid_owner, :jid_other, :jid_member);
SELECT relowner = (SELECT extowner FROM pg_extension WHERE extname = 'dedup_ext') AS archive_owned_by_extension
  FROM pg_class WHERE oid = :'arch_member'::regclass;
SELECT count(*) FROM :arch_member;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid_member);

--
-- pg_read_all_stats sees every job but controls none, and reads no archive
--
SET ROLE regress_stats;
SELECT job_id = :jid_owner AS is_owner_job, kind, state, submitted_by
  FROM dedup_jobs WHERE job_id IN (:jid_owner, :jid_other, :jid_member) OR target_job = :jid_owner
 ORDER BY job_id;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_member));
SELECT * FROM priv_util.try(format('SELECT count(*) FROM %s', :'arch_member'));
SELECT * FROM priv_util.try($$SELECT * FROM dedup_table('priv.acct', '{name}')$$);

-- regress_other cannot undo the member's job either, nor read other roles'
-- jobs through a function of its own that the planner would run before the
-- views' filter (security barriers): the notice shows its own rows only
SET ROLE regress_other;
CREATE FUNCTION priv.leak(j bigint, r text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001
  AS $$BEGIN RAISE NOTICE 'saw %', r; RETURN true; END$$;
SELECT count(*) FROM dedup_jobs WHERE priv.leak(job_id, submitted_by::text);
SELECT count(*) FROM dedup_orphans o WHERE priv.leak(o.job_id, o.key_values::text);

SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_member));
SELECT count(*) AS acct_rows FROM priv.acct;
-- its own job it can undo
SELECT dedup_rollback(:jid_other) AS restored;
SELECT id, tag FROM priv.mine ORDER BY id;

-- the member undoes its job
SET ROLE regress_member;
SELECT dedup_rollback(:jid_member) AS restored;
SELECT md5(string_agg(a::text, ',' ORDER BY id)) = :'acct_md5' AS exact FROM priv.acct a;

-- a superuser sees all
RESET ROLE;
-- and rolls back another role's job with that role's rights, as it ran
SET ROLE regress_owner;
CREATE TABLE priv.twice (id int PRIMARY KEY, k text);
INSERT INTO priv.twice VALUES (1, 'a'), (2, 'a'), (3, 'b'), (4, 'b');
SELECT job_id AS jid_su FROM dedup_table('twice', '{k}') \gset
CREATE TABLE priv.who (u name);
CREATE FUNCTION priv.note_who() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO priv.who VALUES (current_user); RETURN NEW; END$$;
CREATE TRIGGER note_who BEFORE INSERT ON priv.twice FOR EACH ROW EXECUTE FUNCTION priv.note_who();
RESET ROLE;
SELECT dedup_rollback(:jid_su) AS restored;
SELECT u AS restored_as, count(*) FROM priv.who GROUP BY u;
SELECT current_user = (SELECT extowner::regrole::name FROM pg_extension WHERE extname = 'dedup_ext') AS back_as_superuser;
-- the submitter gives back an archive's space with dedup_drop_archive (it
-- does not own the archive, and cannot drop it itself); the job then has
-- no rollback; another role cannot drop it
SET ROLE regress_owner;
SELECT job_id AS jid_drop, archive_table AS arch_drop FROM dedup_table('twice', '{k}') \gset
SELECT * FROM priv_util.try(format('DROP TABLE %s', :'arch_drop'));
SET ROLE regress_other;
SELECT * FROM priv_util.try(format('SELECT dedup_drop_archive(%s)', :jid_drop));
SET ROLE regress_owner;
SELECT dedup_drop_archive(:jid_drop) AS dropped;
SELECT to_regclass(:'arch_drop') IS NULL AS archive_gone;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_drop));
RESET ROLE;
-- a superuser's dedup_verify of another role's job reads with that role's
-- rights: the job's filter calls a function of the role's, which sees it
SET ROLE regress_owner;
CREATE TABLE priv.filtered (id int PRIMARY KEY, k text);
INSERT INTO priv.filtered VALUES (1, 'a'), (2, 'a');
CREATE TABLE priv.seen (u name);
CREATE FUNCTION priv.note(b boolean) RETURNS boolean LANGUAGE plpgsql
  AS $$BEGIN INSERT INTO priv.seen VALUES (current_user); RETURN b; END$$;
SELECT job_id AS jid_f FROM dedup_table('filtered', '{k}', filter => 'priv.note(true)') \gset
DELETE FROM priv.seen;
RESET ROLE;
SELECT check_name, ok FROM dedup_verify(:jid_f) WHERE check_name = 'no_duplicates';
SELECT DISTINCT u AS verified_as FROM priv.seen;
-- an archive not as the job left it (here: given to the table's owner, as
-- 1.3 had it, who could have changed it) is refused by the rollback and by
-- dedup_verify (55000); dedup_drop_archive still drops it
SELECT archive_table AS arch_f FROM dedup_jobs WHERE job_id = :jid_f \gset
ALTER TABLE :arch_f OWNER TO regress_owner;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_f));
SELECT * FROM priv_util.try(format('SELECT * FROM dedup_verify(%s)', :jid_f));
SELECT dedup_drop_archive(:jid_f) AS dropped;
-- an archive that holds more rows than the job archived (a restore's COPY
-- into it, say) is refused by the rollback too, and by dedup_verify's count;
-- without them it rolls back
SET ROLE regress_owner;
CREATE TABLE priv.extra (id int PRIMARY KEY, k text);
INSERT INTO priv.extra VALUES (1, 'a'), (2, 'a'), (3, 'b');
SELECT job_id AS jid_x, archive_table AS arch_x FROM dedup_table('priv.extra', '{k}') \gset
RESET ROLE;
INSERT INTO :arch_x SELECT 9, 'z', dedup_job_id, dedup_action, dedup_new_value, dedup_survivor, dedup_xact FROM :arch_x;
SET ROLE regress_owner;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_x));
SELECT check_name, ok, replace(detail, :'arch_x', 'ARCHIVE') AS detail FROM dedup_verify(:jid_x) WHERE check_name = 'archive_complete';
RESET ROLE;
DELETE FROM :arch_x WHERE id = 9;
SET ROLE regress_owner;
SELECT dedup_rollback(:jid_x) AS restored;
SELECT * FROM priv.extra ORDER BY id;
-- the same for the archive of a table a merge re-pointed
CREATE TABLE priv.xp (id int PRIMARY KEY, k text);
CREATE TABLE priv.xc (id int PRIMARY KEY, p_id int REFERENCES priv.xp);
INSERT INTO priv.xp VALUES (1, 'a'), (2, 'a');
INSERT INTO priv.xc VALUES (1, 2);
SELECT job_id AS jid_xm FROM dedup_table('priv.xp', '{k}', action => 'merge') \gset
SELECT ref_archives -> 0 ->> 'archive' AS arch_xc FROM dedup_jobs WHERE job_id = :jid_xm \gset
RESET ROLE;
INSERT INTO :arch_xc SELECT 9, p_id, dedup_job_id, dedup_action, dedup_new_value, dedup_survivor, dedup_xact FROM :arch_xc;
SET ROLE regress_owner;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_xm));
SELECT check_name, ok, detail FROM dedup_verify(:jid_xm) WHERE check_name = 'ref_archives_complete';
RESET ROLE;
DELETE FROM :arch_xc WHERE id = 9;
SET ROLE regress_owner;
SELECT check_name, ok, detail FROM dedup_verify(:jid_xm) WHERE check_name = 'ref_archives_complete';
SELECT dedup_rollback(:jid_xm) AS restored;
SELECT * FROM priv.xc;
-- and for a backfill's list of the rows it linked
CREATE TABLE priv.bp (id int PRIMARY KEY, code text);
CREATE TABLE priv.bc (id int PRIMARY KEY, code text, bp_id int);
INSERT INTO priv.bp VALUES (1, 'a');
INSERT INTO priv.bc VALUES (1, 'a', NULL), (2, 'a', NULL), (3, 'z', NULL);
SELECT job_id AS jid_bl FROM backfill_fk('priv.bc', 'bp_id', 'priv.bp', '{code}') \gset
SELECT format('dedup_archive.bc_%s_linked', :jid_bl) AS arch_bl \gset
RESET ROLE;
INSERT INTO :arch_bl SELECT * FROM :arch_bl LIMIT 1;
SET ROLE regress_owner;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_bl));
SELECT check_name, ok, detail FROM dedup_verify(:jid_bl) WHERE check_name = 'archive_complete';
RESET ROLE;
DELETE FROM :arch_bl WHERE ctid = (SELECT max(ctid) FROM :arch_bl);
SET ROLE regress_owner;
SELECT check_name, ok, detail FROM dedup_verify(:jid_bl) WHERE check_name = 'archive_complete';
SELECT dedup_rollback(:jid_bl) AS restored;
SELECT * FROM priv.bc ORDER BY id;
RESET ROLE;
-- a backfill whose archives were dropped still verifies (its constraint and
-- orphans are kept in the job)
SELECT dedup_drop_archive(:jid_bf) AS bf_dropped;
SELECT check_name, ok FROM dedup_verify(:jid_bf) ORDER BY check_name;
-- an archive's columns of types users made get no statistics: ANALYZE (as
-- the archive's owner, the extension's) would run the type's functions (a
-- range type's subtype_diff)
SET ROLE regress_owner;
CREATE FUNCTION priv.span_diff(a int, b int) RETURNS float8 LANGUAGE sql IMMUTABLE AS 'SELECT (b - a)::float8';
CREATE TYPE priv.span AS RANGE (subtype = int, subtype_diff = priv.span_diff);
CREATE TABLE priv.spans (id int PRIMARY KEY, k text, r priv.span);
INSERT INTO priv.spans VALUES (1, 'a', '[1,5)'), (2, 'a', '[2,6)');
SELECT job_id AS jid_sp, archive_table AS arch_sp FROM dedup_table('spans', '{k}') \gset
RESET ROLE;
SELECT attname, attstattarget FROM pg_attribute
 WHERE attrelid = :'arch_sp'::regclass AND attname IN ('k', 'r') ORDER BY attname;
-- dedup_drop_archive drops only the job's own archive: a table a superuser
-- made under its name since is left alone
DROP TABLE :arch_sp;
CREATE TABLE :arch_sp (note text);
SET ROLE regress_owner;
SELECT dedup_drop_archive(:jid_sp) AS dropped;
RESET ROLE;
SELECT to_regclass(:'arch_sp') IS NOT NULL AS impostor_kept;
DROP TABLE :arch_sp;
SELECT submitted_by, kind, count(*) FROM dedup_jobs
 WHERE job_id IN (:jid_owner, :jid_other, :jid_member) OR target_job IN (:jid_owner, :jid_other, :jid_member)
 GROUP BY 1, 2 ORDER BY 1, 2;
-- secret never changed
SELECT md5(string_agg(s::text, ',' ORDER BY id)) = :'secret_md5' AS secret_unchanged FROM priv.secret s;

-- a table that changed hands since its job: its new owner's role may read
-- the archive (granted when the rollback reads it), the one before no longer
-- may; the submitter, a member of the new owner, rolls the job back
DROP ROLE IF EXISTS regress_new_owner;
CREATE ROLE regress_new_owner;
GRANT USAGE, CREATE ON SCHEMA priv TO regress_new_owner;
SET ROLE regress_member;
CREATE TABLE priv.handed (id int PRIMARY KEY, k text);
INSERT INTO priv.handed VALUES (1, 'a'), (2, 'a');
RESET ROLE;
ALTER TABLE priv.handed OWNER TO regress_owner;
SET ROLE regress_member;
SELECT job_id AS jid_h, archive_table AS arch_h FROM dedup_table('priv.handed', '{k}') \gset
RESET ROLE;
ALTER TABLE priv.handed OWNER TO regress_new_owner;
GRANT regress_new_owner TO regress_member;
SELECT count(*) > 0 AS verified FROM dedup_verify(:jid_h);
SELECT r AS role, has_table_privilege(r, :'arch_h', 'SELECT') AS reads_archive
  FROM unnest(ARRAY['regress_owner', 'regress_new_owner']) r ORDER BY r;
SET ROLE regress_member;
SELECT dedup_rollback(:jid_h) AS restored;
RESET ROLE;
SELECT count(*) AS handed_rows FROM priv.handed;
-- handed to a role the submitter is no member of: the submitter can no
-- longer roll back, and a superuser's verify and rollback act with the new
-- owner's rights (with the submitter's they failed, leaving no way back)
SET ROLE regress_owner;
CREATE TABLE priv.given (id int PRIMARY KEY, k int);
INSERT INTO priv.given SELECT g, g % 3 FROM generate_series(1, 9) g;
SELECT job_id AS jid_g FROM dedup_table('priv.given', '{k}') \gset
RESET ROLE;
ALTER TABLE priv.given OWNER TO regress_other;
SET ROLE regress_owner;
SELECT * FROM priv_util.try(format('SELECT dedup_rollback(%s)', :jid_g));
RESET ROLE;
SELECT check_name, ok FROM dedup_verify(:jid_g) ORDER BY check_name;
SELECT dedup_rollback(:jid_g) AS restored;
SELECT count(*) AS given_rows FROM priv.given;
-- but a job with a filter (the submitter's code) is not verified with the
-- new owner's rights, which may be more than the submitter's
SET ROLE regress_owner;
CREATE TABLE priv.given_f (id int PRIMARY KEY, k int);
INSERT INTO priv.given_f SELECT g, g % 3 FROM generate_series(1, 9) g;
SELECT job_id AS jid_gf FROM dedup_table('priv.given_f', '{k}', filter => 'id > 0') \gset
RESET ROLE;
ALTER TABLE priv.given_f OWNER TO regress_other;
SELECT * FROM priv_util.try(format('SELECT * FROM dedup_verify(%s)', :jid_gf));
SELECT dedup_rollback(:jid_gf) AS restored;

RESET search_path;
DROP OWNED BY regress_owner, regress_other, regress_member, regress_stats, regress_new_owner;
DROP ROLE regress_new_owner;
DROP ROLE regress_owner;
DROP ROLE regress_other;
DROP ROLE regress_member;
DROP ROLE regress_stats;
