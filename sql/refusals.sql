--
-- refusals: every refusal is an ERROR with the right SQLSTATE, a message naming the
-- argument, and nothing changed.  ref.refuse(q) runs q, catches the error and shows
-- its SQLSTATE and message, then whether anything changed (table data, jobs, archives,
-- indexes, relations of the schema, and a non-transactional canary sequence that an
-- injected statement would advance).  If q is NOT refused, refuse() says 'NOT REFUSED'
-- and undoes it.
--
DROP ROLE IF EXISTS regress_ref_user;
CREATE ROLE regress_ref_user;

CREATE SCHEMA ref;
SET search_path = ref, public;

CREATE TABLE ref.t (id int PRIMARY KEY, a int, b text, j json, p point, jb jsonb);
INSERT INTO ref.t
SELECT g, g % 3, 'v' || g % 2, json_build_object('g', g % 3), point(g % 3, 0),
       jsonb_build_object('g', g % 3)
  FROM generate_series(1, 12) g;
CREATE SEQUENCE ref.canary;
CREATE VIEW ref.v AS SELECT * FROM ref.t;
CREATE MATERIALIZED VIEW ref.mv AS SELECT * FROM ref.t;
CREATE TABLE ref.pt (id int, a int, b text) PARTITION BY RANGE (id);
CREATE TABLE ref.pt1 PARTITION OF ref.pt FOR VALUES FROM (0) TO (100);
INSERT INTO ref.pt SELECT id, a, b FROM ref.t;
CREATE TYPE ref.ty AS (a int, b text);
CREATE FOREIGN DATA WRAPPER ref_dummy_fdw;
CREATE SERVER ref_dummy_server FOREIGN DATA WRAPPER ref_dummy_fdw;
CREATE FOREIGN TABLE ref.ft (id int, a int, b text) SERVER ref_dummy_server;
CREATE TABLE ref.nopk (a int, b text);
INSERT INTO ref.nopk VALUES (1, 'x'), (1, 'x');
CREATE TABLE ref.notext (id int PRIMARY KEY, a int, d date);
INSERT INTO ref.notext VALUES (1, 1, '2024-01-01'), (2, 1, '2024-01-01');
CREATE TABLE ref.gen (id int PRIMARY KEY, first text, last text,
                      full_name text GENERATED ALWAYS AS (first || ' ' || last) STORED);
INSERT INTO ref.gen (id, first, last) VALUES (1, 'x', 'y'), (2, 'x', 'y');
CREATE TABLE ref.pkname (grp int, name text, PRIMARY KEY (grp, name));
INSERT INTO ref.pkname VALUES (1, 'a'), (1, 'b');
CREATE TABLE ref.short (id int PRIMARY KEY, code varchar(3) NOT NULL);
INSERT INTO ref.short VALUES (1, 'abc'), (2, 'abc'), (3, 'xyz');
CREATE TABLE ref.other_owner (id int PRIMARY KEY, a int);
INSERT INTO ref.other_owner VALUES (1, 1), (2, 1);
CREATE TABLE ref.ih (id int PRIMARY KEY, a int);
CREATE TABLE ref.ih1 () INHERITS (ref.ih);
INSERT INTO ref.ih VALUES (1, 1);
INSERT INTO ref.ih1 VALUES (2, 1);
GRANT USAGE ON SCHEMA ref TO regress_ref_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON ref.other_owner TO regress_ref_user;

CREATE FUNCTION ref.snapshot() RETURNS text LANGUAGE sql AS $$
  SELECT concat_ws(' | ',
    (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM ref.t t),
    (SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM ref.short s),
    (SELECT md5(string_agg(n::text, ',' ORDER BY id)) FROM ref.notext n),
    (SELECT count(*) FROM ref.nopk),
    (SELECT count(*) FROM ref.other_owner),
    (SELECT count(*) FROM ref.pt),
    (SELECT count(*) FROM public.dedup_jobs),
    (SELECT count(*) FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace),
    (SELECT count(*) FROM pg_class WHERE relnamespace = 'ref'::regnamespace),
    (SELECT count(*) FROM pg_constraint WHERE connamespace = 'ref'::regnamespace),
    (SELECT last_value || '/' || is_called FROM ref.canary))
$$;
CREATE TABLE ref.baseline AS SELECT ref.snapshot() AS s;
-- SECURITY DEFINER so that it also works under SET ROLE regress_ref_user
CREATE FUNCTION ref.unchanged() RETURNS boolean LANGUAGE sql SECURITY DEFINER
  SET search_path = pg_catalog AS $$
  SELECT ref.snapshot() = (SELECT s FROM ref.baseline)
$$;

CREATE FUNCTION ref.refuse(q text, OUT code text, OUT message text, OUT unchanged boolean)
LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    EXECUTE q;
    code := 'NOT REFUSED';
    unchanged := ref.unchanged();
    RAISE EXCEPTION 'undo';
  EXCEPTION WHEN OTHERS THEN
    IF code IS NULL THEN
      code := SQLSTATE;
      message := SQLERRM;
    END IF;
  END;
  IF unchanged IS NULL THEN
    unchanged := ref.unchanged();
  END IF;
END $$;

-- sanity: the harness sees a successful call as not refused
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a,b}')$$);

--
-- unknown column in key / keep / filter: 42703
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{nope}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a,nope}')$$);
-- key elements are column names, not SQL identifiers: "A" is not a
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{A}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', ARRAY['a; DROP TABLE ref.t'])$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{nope}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{nope}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{nope}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'nope')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'id DESC, nope')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', keep => 'nope DESC')$$);
-- a constant orders nothing (in SQL, ORDER BY 3 would be a column; not here),
-- and a volatile keep makes the survivor chance: 22023
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => '3 DESC')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', keep => 'id, ''x''')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'random()')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'nope IS NULL')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{a}', filter => 'nope > 0')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{a}', filter => 'nope > 0')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', filter => 'nope > 0')$$);

--
-- empty or NULL key: 22023
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{NULL}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{""}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', NULL)$$);

--
-- unknown action / strategy, batch_size <= 0: 22023
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', action => 'remove')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', action => NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', action => '')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', action => 'remove')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', strategy => 'fast')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', strategy => NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', batch_size => 0)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', batch_size => -1)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', batch_size => 0, dry_run => true)$$);

--
-- filter that is not boolean: 42804
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'a + 1')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'b')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{a}', filter => 'a + 1')$$);
-- (an untyped literal is coerced to boolean, as in WHERE 'yes': accepting it is fine)
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', filter => '''yes''')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', filter => '''yes''::text')$$);

--
-- a key column whose type has no equality operator (json, point)
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{j}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a,p}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{j}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{p}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{j}')$$);
-- jsonb has one: accepted
SELECT total_rows, duplicate_groups FROM dedup_audit('ref.t', '{jb}');

--
-- rename needs a string-typed key column that is not generated, and a primary
-- key: 22023
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.notext', '{a,d}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.notext', '{a,d}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.nopk', '{a,b}', action => 'rename')$$);
-- nor a generated column, which takes only its expression's value: the
-- preview says so too
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.gen', '{full_name}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.gen', '{full_name}', action => 'rename')$$);
-- nor a column of the primary key, by which renames are undone
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.pkname', '{grp,name}', action => 'rename')$$);
-- a renamed value that does not fit the column fails and leaves no trace,
-- and its dry run (a rename rolled back) fails the same way
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.short', '{code}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.short', '{code}', action => 'rename', dry_run => true)$$);
-- the same in full: what rejected the value, a hint, and no internal
-- statement as the error's context
\set SHOW_CONTEXT always
SELECT * FROM dedup_table('ref.short', '{code}', action => 'rename');
\set SHOW_CONTEXT errors

--
-- not a plain table: 42809
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.v', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.mv', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.pt', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.ft', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.canary', '{last_value}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t_pkey', '{id}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.ty', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.v', '{a}', dry_run => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.v', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.pt', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table(NULL, '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit(NULL, '{a}')$$);
-- a parent of inheritance children: every statement reads ONLY the table,
-- and the children's rows would go unseen
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.ih', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.ih', '{a}')$$);
SELECT count(*) AS ih_rows FROM ref.ih;
-- a system catalog or the extension's own job table is not the caller's to
-- deduplicate, even for a superuser
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('pg_catalog.pg_am', '{amtype}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('pg_catalog.pg_am', '{amtype}', dry_run => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('public.dedup_job', '{kind}')$$);

--
-- a table the caller does not own: 42501 (even with DELETE and UPDATE granted)
--
SET ROLE regress_ref_user;
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.other_owner', '{a}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.other_owner', '{a}', dry_run => true)$$);
RESET ROLE;

--
-- keep is one ORDER BY list, filter one expression: injections are errors
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'id; DROP TABLE t')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'true); DROP TABLE t; --')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'id; SELECT nextval(''ref.canary'')')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'true); SELECT nextval(''ref.canary''); --')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'true; SELECT nextval(''ref.canary'')')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', keep => 'id; SELECT nextval(''ref.canary'')')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{a}', filter => 'true); SELECT nextval(''ref.canary''); --')$$);
-- not one expression: a filter that only parses when pasted inside parentheses
SELECT * FROM ref.refuse($$SELECT * FROM dedup_audit('ref.t', '{a}', filter => 'false) OR (true')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'id < 0) OR (nextval(''ref.canary'') > 0')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'id) x, (SELECT nextval(''ref.canary'')) y --')$$);
-- keep is an ORDER BY list, not a statement tail
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'id LIMIT 1')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', keep => 'id FOR UPDATE')$$);
-- an aggregate or a window function is no row filter / row order
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'count(*) > 1')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'count(*)')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => 'row_number() OVER ()')$$);
-- empty keep / filter
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => '')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => '')$$);

-- the same injections at top level: errors, the table is still there, canary untouched
\set VERBOSITY sqlstate
SELECT * FROM dedup_table('t', '{a}', keep => 'id; DROP TABLE t');
SELECT * FROM dedup_table('t', '{a}', filter => 'true); DROP TABLE t; --');
SELECT * FROM dedup_preview('t', '{a}', keep => 'id; DROP TABLE t');
SELECT * FROM dedup_audit('t', '{a}', filter => 'true); DROP TABLE t; --');
SELECT * FROM dedup_groups('t', '{a}', filter => 'true); DROP TABLE t; --');
SELECT * FROM dedup_table('t', '{a}', filter => 'a > 0) OR (nextval(''ref.canary'') > 0');
SELECT * FROM dedup_table('t', '{a,b}', action => 'remove');
SELECT * FROM dedup_table('t', '{a}', batch_size => 0);
SELECT * FROM dedup_table('v', '{a}');
\set VERBOSITY default
SELECT to_regclass('ref.t') IS NOT NULL AS t_exists, count(*) FROM ref.t;
SELECT last_value, is_called FROM ref.canary;
SELECT ref.unchanged() AS unchanged;

--
-- odd argument values that are not clearly refusals (implementation's choice, shown)
--
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a,a}', add_unique => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', keep => NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', nulls_distinct => NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', dry_run => NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{a}', max_groups => 0)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{a}', max_groups => -1)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_groups('ref.t', '{a}', max_groups => NULL)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', max_rows => 0)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.t', '{a}', max_rows => -1)$$);
SELECT * FROM ref.refuse($$SELECT dedup_rollback(NULL)$$);
SELECT * FROM ref.refuse($$SELECT dedup_rollback(-1)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_verify(-1)$$);

--
-- strategy: 'auto', 'delete' and 'rewrite' are accepted; the result says 'delete' for now
--
CREATE TABLE ref.acc (id int PRIMARY KEY, a int);
INSERT INTO ref.acc SELECT g, g % 4 FROM generate_series(1, 20) g;
SELECT md5(string_agg(acc::text, ',' ORDER BY id)) AS acc_md5 FROM ref.acc acc \gset
SELECT job_id AS jid_auto FROM dedup_table('ref.acc', '{a}', strategy => 'auto') \gset
SELECT state, strategy, rows_deleted FROM dedup_jobs WHERE job_id = :jid_auto;
SELECT dedup_rollback(:jid_auto) AS restored;
SELECT job_id AS jid_rewrite FROM dedup_table('ref.acc', '{a}', strategy => 'rewrite') \gset
SELECT state, strategy, rows_deleted FROM dedup_jobs WHERE job_id = :jid_rewrite;
SELECT count(*) FROM ref.acc;
SELECT dedup_rollback(:jid_rewrite) AS restored;
SELECT state, strategy, rows_deleted
  FROM dedup_table('ref.acc', '{a}', strategy => 'delete', batch_size => 5);
SELECT id FROM ref.acc ORDER BY id;

-- temporary and unlogged tables are tables
CREATE TEMP TABLE tmp_t (id int PRIMARY KEY, a int);
INSERT INTO tmp_t SELECT g, g % 2 FROM generate_series(1, 6) g;
SELECT job_id AS jid_tmp FROM dedup_table('tmp_t', '{a}') \gset
SELECT count(*) FROM tmp_t;
SELECT dedup_rollback(:jid_tmp) AS restored;
CREATE UNLOGGED TABLE ref.unl (id int PRIMARY KEY, a int);
INSERT INTO ref.unl SELECT g, g % 2 FROM generate_series(1, 6) g;
SELECT state, rows_deleted FROM dedup_table('ref.unl', '{a}');

--
-- more refusals, each with nothing changed: a background job cannot rewrite
-- (0A000); merge cannot re-point rows of a partitioned referencing table
-- (0A000), refused at submit time for a background job too; a unique index
-- predicate must be immutable (42P17); a rollback job cannot be rolled back
-- (0A000)
--
CREATE TABLE ref.mparent (id int PRIMARY KEY, name text);
INSERT INTO ref.mparent VALUES (1, 'x'), (2, 'x');
CREATE TABLE ref.mref (id int, pid int REFERENCES ref.mparent) PARTITION BY RANGE (id);
CREATE TABLE ref.mref_1 PARTITION OF ref.mref FOR VALUES FROM (0) TO (100);
INSERT INTO ref.mref VALUES (1, 2);
CREATE TABLE ref.rb (id int PRIMARY KEY, a int);
INSERT INTO ref.rb SELECT g, g % 2 FROM generate_series(1, 4) g;
SELECT job_id AS jid_rb FROM dedup_table('ref.rb', '{a}') \gset
SELECT dedup_rollback(:jid_rb) AS restored;
SELECT job_id AS jid_rbjob FROM dedup_jobs WHERE target_job = :jid_rb \gset
UPDATE ref.baseline SET s = ref.snapshot();
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', background => true, strategy => 'rewrite')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.mparent', '{name}', action => 'merge', background => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'random() < 2', add_unique => true)$$);
SELECT code, regexp_replace(message, '[0-9]+', 'N') AS message, unchanged
  FROM ref.refuse(format('SELECT dedup_rollback(%s)', :jid_rbjob));
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.mparent', '{name}', action => 'merge')$$);

-- rename: not a column of type name, which cuts a longer value back
-- silently (22023); a BEFORE UPDATE trigger that changes the renamed value
-- (here back to the duplicate): 09000, nothing changed, in the foreground
-- and in a batch
CREATE TABLE ref.named (id int PRIMARY KEY, k name);
INSERT INTO ref.named VALUES (1, repeat('a', 62)), (2, repeat('a', 62));
CREATE TABLE ref.unrenamed (id int PRIMARY KEY, k text);
INSERT INTO ref.unrenamed VALUES (1, 'a'), (2, 'a'), (3, 'a');
CREATE FUNCTION ref.cut() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN NEW.k := split_part(NEW.k, '-', 1); RETURN NEW; END$$;
CREATE TRIGGER cut BEFORE UPDATE ON ref.unrenamed FOR EACH ROW EXECUTE FUNCTION ref.cut();
UPDATE ref.baseline SET s = ref.snapshot();
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.named', '{k}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.unrenamed', '{k}', action => 'rename')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.unrenamed', '{k}', action => 'rename', dry_run => true)$$);
SELECT job_id AS jcut FROM dedup_table('ref.unrenamed', '{k}', action => 'rename', background => true) \gset
SELECT dedup_wait(:jcut, '60s') AS state;
SELECT split_part(error, E'\n', 1) AS error FROM dedup_jobs WHERE job_id = :jcut;
SELECT id, k FROM ref.unrenamed ORDER BY id;

-- a background job on a temporary table (the worker is another session):
-- 0A000; a column named like one of the archive's own: 42701 (nothing
-- changed in either)
CREATE TEMP TABLE tmp_dups (id int PRIMARY KEY, k int);
INSERT INTO tmp_dups VALUES (1, 1), (2, 1);
CREATE TABLE ref.own_names (id int PRIMARY KEY, k int, dedup_action text);
INSERT INTO ref.own_names VALUES (1, 1, 'a'), (2, 1, 'b');
UPDATE ref.baseline SET s = ref.snapshot();
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('tmp_dups', '{k}', background => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.own_names', '{k}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.own_names', '{k}', background => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.own_names', '{k}', strategy => 'rewrite')$$);
-- without an archive it runs
SELECT rows_deleted FROM dedup_table('ref.own_names', '{k}', archive => false);
-- float keys in row ids are exact whatever extra_float_digits says: two
-- rows, two row ids
CREATE TABLE ref.floats (id float8 PRIMARY KEY, k text);
INSERT INTO ref.floats VALUES (0.3, 'b'), (0.1::float8 + 0.2::float8, 'a'), (0.7, 'a');
SET extra_float_digits = 0;
SELECT row_id, decision FROM dedup_preview('ref.floats', '{k}');
RESET extra_float_digits;
-- keep: 'FIRST' is 'first'; an expression of no column orders nothing
-- (22023); an item whose type has no ordering names keep (42883)
CREATE TABLE ref.kp (id int PRIMARY KEY, k int, j json, x xid);
INSERT INTO ref.kp VALUES (1, 1, '{}', '5'), (2, 1, '{}', '5');
UPDATE ref.baseline SET s = ref.snapshot();
SELECT row_id, decision FROM dedup_preview('ref.kp', '{k}', keep => 'LAST');
-- with white space around too (it was taken for a column "last")
SELECT count(*) AS differ
  FROM (SELECT row_id::text, decision FROM dedup_preview('ref.kp', '{k}', keep => E' Last\n')
        EXCEPT SELECT row_id::text, decision FROM dedup_preview('ref.kp', '{k}', keep => 'last')) d;
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.kp', '{k}', keep => '1 + 1')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.kp', '{k}', keep => '''x''')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.kp', '{k}', keep => 'j')$$);
-- a key of a type with hash equality only (xid): the audit groups it; a
-- preview or a job, which sort each group, refuse it (42883)
SELECT duplicate_groups FROM dedup_audit('ref.kp', '{x}');
SELECT * FROM ref.refuse($$SELECT * FROM dedup_preview('ref.kp', '{x}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.kp', '{x}')$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.kp', '{x}', background => true)$$);
-- a preview numbers groups by group, not by how their key reads as jsonb
-- (an array's lower bound is lost there)
CREATE TABLE ref.arr (id int PRIMARY KEY, a int[]);
INSERT INTO ref.arr VALUES (1, '{1,2}'), (2, '{1,2}'), (3, '[0:1]={1,2}'), (4, '[0:1]={1,2}');
SELECT group_no, row_id, decision FROM dedup_preview('ref.arr', '{a}') ORDER BY group_no, row_id->>'id';

-- add_unique where CREATE UNIQUE INDEX fails whatever the rows, refused
-- before the job's work (a background job's batches had deleted rows
-- before its index build failed): a filter that reads a system column
-- (42P17), a key of more columns than an index takes (54011)
SELECT format('CREATE TABLE ref.wide (%s)', string_agg(format('c%s int', g), ', '))
  FROM generate_series(1, 33) g \gexec
INSERT INTO ref.wide SELECT FROM generate_series(1, 2);
-- and a job's archive, the extension's data, is no table to deduplicate
CREATE TABLE ref.arsrc (id int PRIMARY KEY, k int);
INSERT INTO ref.arsrc SELECT g, g % 2 FROM generate_series(1, 6) g;
SELECT archive_table AS ref_archive FROM dedup_table('ref.arsrc', '{k}') \gset
UPDATE ref.baseline SET s = ref.snapshot();
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'xmin::text::int > 0', add_unique => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.t', '{a}', filter => 'ctid > ''(0,0)''', add_unique => true, background => true)$$);
SELECT * FROM ref.refuse($$SELECT * FROM dedup_table('ref.wide', (SELECT array_agg('c' || g) FROM generate_series(1, 33) g),
                                                     add_unique => true, background => true)$$);
SELECT code, regexp_replace(message, '_[0-9]+"', '_N"') AS message, unchanged
  FROM ref.refuse(format('SELECT * FROM dedup_table(%L, %L, archive => false)', :'ref_archive', '{k}'));
SELECT count(*) AS wide_rows, (SELECT count(*) FROM :ref_archive) AS archived FROM ref.wide;
-- without add_unique, the same filter and key are fine
SELECT state, rows_deleted FROM dedup_table('ref.wide', (SELECT array_agg('c' || g) FROM generate_series(1, 33) g),
                                            dry_run => true);

RESET search_path;
DROP OWNED BY regress_ref_user;
DROP ROLE regress_ref_user;
