--
-- collations: a string key is grouped under its own equality.  Text under a
-- deterministic collation is sorted under "C" for speed (the same groups);
-- char(n) ignores trailing blanks; a nondeterministic collation groups what
-- it calls equal.
--
CREATE SCHEMA coll;
SET search_path = coll, public;
CREATE COLLATION coll.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);

CREATE TABLE coll.codes (id int PRIMARY KEY, code char(6) NOT NULL, label text COLLATE "en-x-icu" NOT NULL,
                         nick text COLLATE coll.ci NOT NULL);
INSERT INTO coll.codes VALUES
  (1, 'ab', 'Delta', 'Foo'), (2, 'ab  ', 'delta', 'FOO'), (3, 'ab', 'Delta', 'foo'),
  (4, 'b', 'éclair', 'Bar'), (5, 'b ', 'eclair', 'bar'), (6, 'c', 'éclair', 'baz');
SELECT md5(string_agg(c::text, ',' ORDER BY id)) AS codes_md5 FROM coll.codes c \gset

-- char(n): ('ab' x3), ('b' x2): 2 groups, 3 rows to remove
SELECT group_no, row_id, decision, key_values FROM dedup_preview('codes', '{code}');
-- en-x-icu is deterministic: 'Delta' <> 'delta', 'éclair' <> 'eclair'
SELECT group_no, row_id, decision, key_values FROM dedup_preview('codes', '{label}');
-- the nondeterministic collation: Foo = FOO = foo, Bar = bar
SELECT group_no, row_id, decision, key_values FROM dedup_preview('codes', '{nick}');

SELECT job_id AS j1, duplicate_groups, rows_deleted
  FROM dedup_table('codes', '{code}', strategy => 'delete') \gset
SELECT :duplicate_groups AS groups, :rows_deleted AS deleted;
SELECT id, code FROM coll.codes ORDER BY id;
SELECT dedup_rollback(:j1) AS restored;

SELECT job_id AS j2, duplicate_groups, rows_deleted
  FROM dedup_table('codes', '{nick}', keep => 'last', strategy => 'delete', add_unique => true) \gset
SELECT :duplicate_groups AS groups, :rows_deleted AS deleted;
SELECT id, nick FROM coll.codes ORDER BY id;
SELECT dedup_rollback(:j2) AS restored;

SELECT job_id AS j3, duplicate_groups, rows_deleted
  FROM dedup_table('codes', '{label}', keep => 'id DESC', strategy => 'rewrite', add_unique => true) \gset
SELECT :duplicate_groups AS groups, :rows_deleted AS deleted;
SELECT id, label FROM coll.codes ORDER BY id;
SELECT dedup_rollback(:j3) AS restored;
SELECT md5(string_agg(c::text, ',' ORDER BY id)) = :'codes_md5' AS exact FROM coll.codes c;

-- rename under citext's equality: 'ABC-2' is taken by 'abc-2', so the
-- suffix is extended, and no new duplicate is made
CREATE EXTENSION citext SCHEMA coll;
CREATE TABLE coll.ci (id int PRIMARY KEY, k coll.citext);
INSERT INTO coll.ci VALUES (1, 'abc'), (2, 'ABC'), (3, 'abc-2'), (4, 'x'), (5, 'x');
SELECT row_id, decision, new_value FROM dedup_preview('ci', '{k}', action => 'rename');
SELECT job_id AS jci, rows_renamed FROM dedup_table('ci', '{k}', action => 'rename') \gset
SELECT :rows_renamed AS renamed;
SELECT id, k FROM coll.ci ORDER BY id;
SELECT check_name, ok FROM dedup_verify(:jci) WHERE check_name = 'no_duplicates';

-- merge when the referencing column has another collation than the
-- referenced one: references compare under the referenced column's (the
-- SQL standard's rule), so 'B1' points at 'b1' under coll.ci and moves too
CREATE TABLE coll.parts (id int PRIMARY KEY, code text COLLATE coll.ci UNIQUE, grp text);
CREATE TABLE coll.uses (id int PRIMARY KEY, pcode text COLLATE "C" REFERENCES coll.parts (code));
INSERT INTO coll.parts VALUES (1, 'a1', 'g'), (2, 'b1', 'g'), (3, 'c1', 'h');
INSERT INTO coll.uses VALUES (1, 'a1'), (2, 'b1'), (3, 'B1'), (4, 'c1');
SELECT job_id AS jm, rows_deleted, refs_repointed
  FROM dedup_table('parts', '{grp}', action => 'merge') \gset
SELECT :rows_deleted AS deleted, :refs_repointed AS repointed;
SELECT id, pcode FROM coll.uses ORDER BY id;
SELECT dedup_rollback(:jm) AS restored;
SELECT id, pcode FROM coll.uses ORDER BY id;
SELECT id, code FROM coll.parts ORDER BY id;

-- two deterministic collations ("en-x-icu" referenced, "C" referencing,
-- neither the default: they compare under neither by themselves): a delete
-- names the row a deferred foreign key still references (23503, was
-- 42P22), and a merge compares them under the referencing column's, the
-- same rows as under the other for text
CREATE TABLE coll.p2 (id int PRIMARY KEY, code text COLLATE "en-x-icu" UNIQUE, grp text);
CREATE TABLE coll.c2 (id int PRIMARY KEY,
                      pcode text COLLATE "C" REFERENCES coll.p2 (code) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO coll.p2 VALUES (1, 'a1', 'g'), (2, 'b1', 'g'), (3, 'c1', 'h');
INSERT INTO coll.c2 VALUES (1, 'a1'), (2, 'b1'), (3, 'c1');
\set VERBOSITY terse
SELECT rows_deleted FROM dedup_table('p2', '{grp}');
\set VERBOSITY default
SELECT rows_deleted, refs_repointed FROM dedup_table('p2', '{grp}', action => 'merge');
SELECT id, pcode FROM coll.c2 ORDER BY id;

-- the other way round, a referencing column under coll.ci and the one it
-- references under "C": PostgreSQL would check a loser's removal under
-- coll.ci, where 'b1' (pointing at the kept row 2) equals the loser 'B1';
-- refused before anything changes (0A000), in a dry run and a preview too
CREATE TABLE coll.p3 (id int PRIMARY KEY, name text, code text COLLATE "C" UNIQUE);
INSERT INTO coll.p3 VALUES (1, 'x', 'a1'), (2, 'y', 'b1'), (3, 'x', 'B1');
CREATE TABLE coll.c3 (id int PRIMARY KEY, code text COLLATE coll.ci REFERENCES coll.p3 (code));
INSERT INTO coll.c3 VALUES (1, 'b1');
SELECT * FROM dedup_table('p3', '{name}', action => 'merge');
\set VERBOSITY sqlstate
SELECT * FROM dedup_table('p3', '{name}', action => 'merge', dry_run => true);
SELECT * FROM dedup_preview('p3', '{name}', action => 'merge');
\set VERBOSITY default
SELECT count(*) AS p3_rows FROM coll.p3;
-- the same tables with the key deferred, and action 'delete': the row that
-- PostgreSQL's check at COMMIT would find ('b1' under coll.ci, pointing at
-- the kept row 2) is found in the call (23503), not at COMMIT
ALTER TABLE coll.c3 ALTER CONSTRAINT c3_code_fkey DEFERRABLE INITIALLY DEFERRED;
\set VERBOSITY terse
SELECT rows_deleted FROM dedup_table('p3', '{name}');
\set VERBOSITY default
SELECT count(*) AS p3_rows FROM coll.p3;

RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA coll CASCADE;
RESET client_min_messages;
