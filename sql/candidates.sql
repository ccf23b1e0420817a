--
-- candidates: with few duplicates, the passes that look for them read only
-- the rows whose key hash repeats (dedup_key_candidates).  The function
-- returns exactly those rows, in ctid order, each once, whatever the memory
-- budget; a dedup through it keeps what the window over every row keeps.
--
CREATE SCHEMA cand;
SET search_path = cand, public;

-- 100000 codes; 1000 of them twice, 10 five times; NULL codes
CREATE TABLE cand.tx (id int PRIMARY KEY, code text, amount int);
INSERT INTO cand.tx SELECT g, 'code-' || g, g % 100 FROM generate_series(1, 100000) g;
INSERT INTO cand.tx SELECT 100000 + g, 'code-' || (g * 97), g FROM generate_series(1, 1000) g;
INSERT INTO cand.tx SELECT 200000 + g, 'code-' || (g % 10 + 1), g FROM generate_series(1, 40) g;
INSERT INTO cand.tx SELECT 300000 + g, NULL, g FROM generate_series(1, 5) g;

-- What the function must return: the rows whose key hash another row
-- shares.  For one column the key hash is the type's hash function (hashtext
-- for text), a NULL hashing as 0 when NULLs are not distinct.
CREATE FUNCTION cand.expected(rel regclass, nulls_distinct boolean) RETURNS SETOF tid
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT t.ctid FROM %s t WHERE ($1 IS FALSE OR t.code IS NOT NULL)
            AND coalesce(hashtext(t.code), 0) IN
                (SELECT coalesce(hashtext(u.code), 0) FROM %s u WHERE ($1 IS FALSE OR u.code IS NOT NULL)
                  GROUP BY 1 HAVING count(*) > 1)', rel, rel) USING nulls_distinct;
END $$;

-- rows returned, rows of duplicate groups (non-NULL keys) among them, same set as
-- expected, strictly increasing ctids (in order, none twice)
CREATE FUNCTION cand.check(rel regclass, nulls_distinct boolean DEFAULT true)
RETURNS TABLE (returned bigint, duplicates bigint, as_expected boolean, ctid_order_once boolean)
LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE got AS
        SELECT c, row_number() OVER () AS n FROM dedup_key_candidates(rel, '{code}', nulls_distinct) c;
    RETURN QUERY EXECUTE format(
        'SELECT (SELECT count(*) FROM got),
                (SELECT count(*) FROM got WHERE got.c IN
                    (SELECT t.ctid FROM %s t JOIN (SELECT u.code FROM %s u GROUP BY u.code
                                                    HAVING count(*) > 1) d ON d.code = t.code)),
                (SELECT array_agg(c ORDER BY c) FROM got)
                    IS NOT DISTINCT FROM (SELECT array_agg(e ORDER BY e) FROM cand.expected($1, $2) e),
                (SELECT coalesce(bool_and(s.c > s.prev), true)
                   FROM (SELECT c, lag(c) OVER (ORDER BY n) AS prev FROM got) s WHERE s.prev IS NOT NULL)',
        rel, rel) USING rel, nulls_distinct;
    DROP TABLE got;
END $$;

-- never analyzed: the first scan outgrows 1MB of pairs (87381) and is split
SET maintenance_work_mem = '1MB';
SELECT * FROM cand.check('cand.tx');
SELECT * FROM cand.check('cand.tx', false);
-- analyzed: two ranges from the start
ANALYZE cand.tx;
SELECT * FROM cand.check('cand.tx');
RESET maintenance_work_mem;
SELECT * FROM cand.check('cand.tx');

-- one key with 150000 rows among 50000 unique ones: under 1MB the repeated
-- hash is compacted to one entry and its rows are returned as they come
CREATE TABLE cand.skewed (code text);
INSERT INTO cand.skewed SELECT CASE WHEN g % 4 = 0 THEN 'u-' || g ELSE 'same' END
  FROM generate_series(1, 200000) g;
SET maintenance_work_mem = '1MB';
SELECT * FROM cand.check('cand.skewed');
RESET maintenance_work_mem;
SELECT * FROM cand.check('cand.skewed');

-- dedup_table goes through the candidates (track_functions counts the
-- calls: cand.calls() before and after, in one transaction, in which the
-- counts are not flushed) and keeps, for each key, the row the window over
-- the whole table keeps
CREATE FUNCTION cand.calls() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce((SELECT calls FROM pg_stat_xact_user_functions
                      WHERE funcname = 'dedup_key_candidates'), 0)
$$;
CREATE FUNCTION cand.kept_as_expected(expected_ids int[]) RETURNS boolean
LANGUAGE sql AS $$
    SELECT array_agg(id ORDER BY id) = (SELECT array_agg(e ORDER BY e) FROM unnest(expected_ids) e)
      FROM cand.tx
$$;
SELECT array_agg(id) AS first_ids FROM (
    SELECT DISTINCT ON (code) id FROM cand.tx WHERE code IS NOT NULL ORDER BY code, id) s \gset
SELECT array_agg(id ORDER BY id) AS nulls_ids FROM cand.tx WHERE code IS NULL \gset
SELECT array_agg(id) AS amount_ids FROM (
    SELECT DISTINCT ON (code) id FROM cand.tx WHERE code IS NOT NULL ORDER BY code, amount DESC, id) s \gset
SELECT array_agg(id) AS filtered_ids FROM (
    (SELECT id FROM cand.tx WHERE amount >= 50 OR code IS NULL)
    UNION ALL
    (SELECT DISTINCT ON (code) id FROM cand.tx WHERE amount < 50 AND code IS NOT NULL ORDER BY code, id DESC)) s \gset

BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT strategy, duplicate_groups, rows_deleted FROM dedup_table('cand.tx', '{code}');
SELECT cand.calls() - :calls_before AS calls;
SELECT cand.kept_as_expected(:'first_ids'::int[] || :'nulls_ids'::int[]);
ROLLBACK;

BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT duplicate_groups, rows_deleted
  FROM dedup_table('cand.tx', '{code}', keep => 'amount DESC', dry_run => true);
SELECT duplicate_groups, rows_deleted FROM dedup_table('cand.tx', '{code}', keep => 'amount DESC');
SELECT cand.calls() - :calls_before AS calls;
SELECT cand.kept_as_expected(:'amount_ids'::int[] || :'nulls_ids'::int[]);
ROLLBACK;

-- a rename and a merge go through the candidates too: the rows a rename
-- leaves as they were, and the rows a merge keeps, are the delete's
BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT duplicate_groups, rows_renamed FROM dedup_table('cand.tx', '{code}', action => 'rename');
SELECT cand.calls() - :calls_before AS calls;
SELECT array_agg(id ORDER BY id) = (SELECT array_agg(e ORDER BY e)
                                      FROM unnest(:'first_ids'::int[] || :'nulls_ids'::int[]) e) AS unrenamed_as_expected
  FROM cand.tx WHERE code IS NULL OR code !~ '-.*-';
ROLLBACK;
BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT duplicate_groups, rows_deleted FROM dedup_table('cand.tx', '{code}', action => 'merge');
SELECT cand.calls() - :calls_before AS calls;
SELECT cand.kept_as_expected(:'first_ids'::int[] || :'nulls_ids'::int[]);
ROLLBACK;

-- a filter: only the rows with amount < 50 take part, keep 'last'
BEGIN;
SELECT duplicate_groups, rows_deleted
  FROM dedup_table('cand.tx', '{code}', keep => 'last', filter => 'amount < 50');
SELECT cand.kept_as_expected(:'filtered_ids'::int[]);
ROLLBACK;

-- NULLs not distinct: the five NULL codes are one group
BEGIN;
SELECT duplicate_groups, rows_deleted FROM dedup_table('cand.tx', '{code}', nulls_distinct => false);
SELECT cand.kept_as_expected(:'first_ids'::int[] || (:'nulls_ids'::int[])[1:1]);
ROLLBACK;

-- two key columns, one of them numeric (its hash ignores the scale: 1.0 = 1.00)
CREATE TABLE cand.lines (id int PRIMARY KEY, code text, qty numeric);
INSERT INTO cand.lines SELECT g, 'c' || (g % 20000), (g % 3)::numeric FROM generate_series(1, 20000) g;
INSERT INTO cand.lines VALUES (20001, 'c1', 1.00), (20002, 'c1', 1.0), (20003, 'c2', 2.000), (20004, 'c2', 3);
ANALYZE cand.lines;
BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT duplicate_groups, rows_deleted FROM dedup_table('cand.lines', '{code,qty}');
SELECT cand.calls() - :calls_before AS calls;
SELECT id FROM cand.lines WHERE id IN (1, 2, 20001, 20002, 20003, 20004) ORDER BY id;
ROLLBACK;

-- a nondeterministic collation: 'ABC' and 'abc' are one key, and hash alike
CREATE COLLATION cand.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE cand.names (id int PRIMARY KEY, name text COLLATE cand.ci);
INSERT INTO cand.names SELECT g, 'name ' || g FROM generate_series(1, 20000) g;
INSERT INTO cand.names VALUES (20001, 'NAME 7'), (20002, 'Name 7'), (20003, 'name 8');
ANALYZE cand.names;
BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT duplicate_groups, rows_deleted FROM dedup_table('cand.names', '{name}');
SELECT cand.calls() - :calls_before AS calls;
SELECT id, name FROM cand.names WHERE lower(name) IN ('name 7', 'name 8') ORDER BY id;
ROLLBACK;

-- a key type without a hash function: the window reads every row, as before
CREATE TABLE cand.flags (id int PRIMARY KEY, bits varbit);
INSERT INTO cand.flags SELECT g, g::bit(20)::varbit FROM generate_series(1, 5000) g;
INSERT INTO cand.flags VALUES (5001, 7::bit(20)::varbit);
ANALYZE cand.flags;
BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT duplicate_groups, rows_deleted FROM dedup_table('cand.flags', '{bits}');
SELECT cand.calls() - :calls_before AS calls;
ROLLBACK;

-- many duplicates: hashing would find nearly every row, so the window reads the table
BEGIN;
SET LOCAL track_functions = 'all';
SELECT cand.calls() AS calls_before \gset
SELECT strategy, rows_deleted FROM dedup_table('cand.skewed', '{code}', strategy => 'delete', archive => false);
SELECT cand.calls() - :calls_before AS calls;
ROLLBACK;

-- refusals, each with its SQLSTATE
CREATE VIEW cand.v AS SELECT * FROM cand.tx;
SELECT * FROM dedup_key_candidates('cand.v', '{code}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_key_candidates('cand.tx', '{nope}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_key_candidates('cand.tx', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_key_candidates('cand.tx', '{code,NULL}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_key_candidates('cand.tx', '{ctid}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_key_candidates('cand.flags', '{bits}');
\echo :LAST_ERROR_SQLSTATE
-- a range compares its bounds by its subtype opclass, which may not be the
-- one its hash uses: not hashed (and dedup_table keeps to the full window)
CREATE TABLE cand.spans (id int PRIMARY KEY, span int4range);
INSERT INTO cand.spans SELECT g, int4range(g, g + 1) FROM generate_series(1, 100) g;
SELECT * FROM dedup_key_candidates('cand.spans', '{span}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_key_candidates(0, '{code}');
\echo :LAST_ERROR_SQLSTATE
CREATE ROLE regress_cand_reader;
GRANT USAGE ON SCHEMA cand TO regress_cand_reader;
GRANT SELECT (id) ON cand.tx TO regress_cand_reader;
SET ROLE regress_cand_reader;
SELECT count(*) FROM dedup_key_candidates('cand.tx', '{code}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- the key's column is not enough: the result is the rows' ctids
GRANT SELECT (code) ON cand.tx TO regress_cand_reader;
SET ROLE regress_cand_reader;
SELECT count(*) FROM dedup_key_candidates('cand.tx', '{code}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON cand.tx TO regress_cand_reader;
SET ROLE regress_cand_reader;
SELECT count(*) FROM dedup_key_candidates('cand.tx', '{code}');
RESET ROLE;
ALTER TABLE cand.tx ENABLE ROW LEVEL SECURITY;
CREATE POLICY low ON cand.tx TO regress_cand_reader USING (amount < 50);
SET ROLE regress_cand_reader;
SELECT count(*) FROM dedup_key_candidates('cand.tx', '{code}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

DROP SCHEMA cand CASCADE;
REVOKE ALL ON SCHEMA public FROM regress_cand_reader;
DROP ROLE regress_cand_reader;
