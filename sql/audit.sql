--
-- audit: dedup_audit, dedup_groups, dedup_preview on small hand-made data.
-- Expected values are in the comments; these three functions change nothing.
--
CREATE SCHEMA audit;
SET search_path = audit, public;

CREATE TABLE audit.t (id int PRIMARY KEY, a int, b text, c int);
INSERT INTO audit.t VALUES
  ( 1,    1, 'x',    5),
  ( 2,    1, 'x',    9),
  ( 3,    1, 'x',    9),
  ( 4,    2, 'y', NULL),
  ( 5,    2, 'y',    1),
  ( 6,    3, 'z',    1),
  ( 7, NULL, 'x',    1),
  ( 8, NULL, 'x',    1),
  ( 9,    4, NULL,   1),
  (10,    5, 'w',    1);

SELECT md5(string_agg(t::text, ',' ORDER BY id)) AS t_md5 FROM audit.t \gset
SELECT count(*) AS njobs FROM dedup_jobs \gset

--
-- dedup_audit
--
-- key (a,b): groups (1,x)=3 and (2,y)=2; rows 7,8,9 have a NULL in the key.
-- expect total 10, duplicate_groups 2, duplicate_rows 3, largest_group 3, null_key_rows 3
SELECT * FROM dedup_audit('audit.t', '{a,b}');
-- nulls_distinct => false: (NULL,x)=2 is a group too, (4,NULL) stays single.
-- expect total 10, distinct_keys 6, duplicate_groups 3, duplicate_rows 4, largest 3, null_key_rows 3
SELECT * FROM dedup_audit('audit.t', '{a,b}', nulls_distinct => false);
-- filter: only rows where it is true take part (row 1 out).
-- expect total 9, duplicate_groups 2, duplicate_rows 2, largest 2
SELECT * FROM dedup_audit('audit.t', '{a,b}', filter => 'id <> 1');
-- filter that is NULL for row 4 (c IS NULL): rows 2,3 only.
-- expect total 2, distinct_keys 1, duplicate_groups 1, duplicate_rows 1, largest 2, null_key_rows 0
SELECT * FROM dedup_audit('audit.t', '{a,b}', filter => 'c = 9');
-- one column: x=5 (1,2,3,7,8), y=2, z, w, NULL (row 9).
-- expect total 10, distinct_keys 4 (or 5 counting the NULL row), groups 2, duplicate_rows 5, largest 5, null_key_rows 1
SELECT * FROM dedup_audit('audit.t', '{b}');
SELECT * FROM dedup_audit('audit.t', '{b}', nulls_distinct => false);
-- a unique key: expect total 10, distinct 10, 0 groups, 0 duplicate rows, largest 1
SELECT * FROM dedup_audit('audit.t', '{id}');
-- positional arguments, key order does not matter for the numbers
SELECT * FROM dedup_audit('audit.t'::regclass, ARRAY['b','a'], NULL, true);
-- invariant: total_rows - duplicate_rows = rows a dedup would leave
SELECT (SELECT total_rows - duplicate_rows FROM dedup_audit('audit.t', '{a,b}')) AS would_leave,
       (SELECT count(*) FROM (SELECT DISTINCT ON (a, b) id FROM audit.t WHERE a IS NOT NULL AND b IS NOT NULL) s)
     + (SELECT count(*) FROM audit.t WHERE a IS NULL OR b IS NULL) AS expected;

-- an empty table: expect all zeros (largest_group 0 or NULL)
CREATE TABLE audit.empty (id int PRIMARY KEY, a int);
SELECT * FROM dedup_audit('audit.empty', '{a}');

-- equality is the type's equality: numeric 1 = 1.0 = 1.00, float8 0 = -0
CREATE TABLE audit.num (id int PRIMARY KEY, v numeric, f float8, s text);
INSERT INTO audit.num VALUES (1, 1, 0, 'a'), (2, 1.0, '-0', 'A'), (3, 1.00, 1, 'a '), (4, 2.5, 2, 'a');
-- expect v: 1 group of 3, duplicate_rows 2; f: 1 group of 2; s: 'a' twice ('A' and 'a ' differ)
SELECT 'v' AS key, * FROM dedup_audit('audit.num', '{v}')
UNION ALL SELECT 'f', * FROM dedup_audit('audit.num', '{f}')
UNION ALL SELECT 's', * FROM dedup_audit('audit.num', '{s}')
ORDER BY key;
-- jsonb has an equality operator: accepted
CREATE TABLE audit.doc (id int PRIMARY KEY, d jsonb);
INSERT INTO audit.doc VALUES (1, '{"a": 1, "b": 2}'), (2, '{"b": 2, "a": 1}'), (3, '{"a": 2}');
-- expect 1 group of 2
SELECT * FROM dedup_audit('audit.doc', '{d}');

--
-- dedup_groups: largest groups first
--
-- expect {"a": 1, "b": "x"} 3, then {"a": 2, "b": "y"} 2, in that order (n = function's order)
SELECT n, key_values, group_rows
  FROM dedup_groups('audit.t', '{a,b}') WITH ORDINALITY AS g(key_values, group_rows, n)
 ORDER BY n;
-- nulls_distinct => false adds {"a": null, "b": "x"} 2
SELECT key_values, group_rows
  FROM dedup_groups('audit.t', '{a,b}', nulls_distinct => false)
 ORDER BY group_rows DESC, key_values::text;
-- the function's own order is largest first
SELECT bool_and(group_rows <= prev) AS largest_first
  FROM (SELECT group_rows, lag(group_rows, 1, group_rows) OVER (ORDER BY n) AS prev
          FROM dedup_groups('audit.t', '{a,b}', nulls_distinct => false)
               WITH ORDINALITY AS g(key_values, group_rows, n)) s;
-- max_groups => 1: only the largest
SELECT key_values, group_rows FROM dedup_groups('audit.t', '{a,b}', max_groups => 1);
-- filter: (1,x)=2 (rows 2,3), (2,y)=2
SELECT key_values, group_rows
  FROM dedup_groups('audit.t', '{a,b}', filter => 'id <> 1')
 ORDER BY group_rows DESC, key_values::text;
-- single column, NULLs equal: x 5, y 2 (the single NULL row is no group)
SELECT key_values, group_rows
  FROM dedup_groups('audit.t', '{b}', nulls_distinct => false)
 ORDER BY group_rows DESC, key_values::text;
-- no duplicates: no rows
SELECT count(*) FROM dedup_groups('audit.t', '{id}');
SELECT count(*) FROM dedup_groups('audit.empty', '{a}');

--
-- dedup_preview: one row per row of a duplicate group
--
-- keep first, delete: (1,x): 1 keep, 2 and 3 delete; (2,y): 4 keep, 5 delete; new_value NULL
SELECT group_no, row_id, decision, key_values, new_value
  FROM dedup_preview('audit.t', '{a,b}')
 ORDER BY key_values::text, (row_id->>'id')::int;
-- group_no: one number per group, numbered from 1
SELECT count(DISTINCT group_no) AS groups, min(group_no), max(group_no),
       count(*) FILTER (WHERE decision = 'keep') AS keeps
  FROM dedup_preview('audit.t', '{a,b}');
-- keep last: 3 and 5 survive
SELECT row_id, decision FROM dedup_preview('audit.t', '{a,b}', keep => 'last')
 ORDER BY (row_id->>'id')::int;
-- keep an ORDER BY list; ties broken by primary key:
-- 'c DESC': (1,x) 2 and 3 tie on c=9 -> 2; (2,y) NULL sorts first in DESC -> 4
SELECT row_id, decision FROM dedup_preview('audit.t', '{a,b}', keep => 'c DESC')
 ORDER BY (row_id->>'id')::int;
-- 'c DESC NULLS LAST': 2 and 5 survive
SELECT row_id, decision FROM dedup_preview('audit.t', '{a,b}', keep => 'c DESC NULLS LAST')
 ORDER BY (row_id->>'id')::int;
-- 'c': 1 (c=5) and 5 (c=1) survive
SELECT row_id, decision FROM dedup_preview('audit.t', '{a,b}', keep => 'c')
 ORDER BY (row_id->>'id')::int;
-- a list: 'c DESC, id DESC': 3 and 4 survive
SELECT row_id, decision FROM dedup_preview('audit.t', '{a,b}', keep => 'c DESC, id DESC')
 ORDER BY (row_id->>'id')::int;
-- an expression in the list: 'abs(c - 6)': (1,x) c=5 -> 1 survives; (2,y) NULL sorts last -> 5
SELECT row_id, decision FROM dedup_preview('audit.t', '{a,b}', keep => 'abs(c - 6)')
 ORDER BY (row_id->>'id')::int;
-- rename: the last text key column (b) becomes b || '-' || id: 2 'x-2', 3 'x-3', 5 'y-5'
SELECT row_id, decision, key_values, new_value
  FROM dedup_preview('audit.t', '{a,b}', action => 'rename')
 ORDER BY (row_id->>'id')::int;
-- nulls_distinct => false: (NULL,x): 7 keep, 8 delete
SELECT row_id, decision, key_values
  FROM dedup_preview('audit.t', '{a,b}', nulls_distinct => false)
 ORDER BY (row_id->>'id')::int;
-- filter: (1,x) is rows 2,3 -> 2 keep, 3 delete
SELECT row_id, decision
  FROM dedup_preview('audit.t', '{a,b}', filter => 'id <> 1')
 ORDER BY (row_id->>'id')::int;
-- max_rows limits the rows returned
SELECT count(*) AS rows_returned FROM dedup_preview('audit.t', '{a,b}', max_rows => 2);
SELECT count(*) AS rows_returned FROM dedup_preview('audit.t', '{a,b}', max_rows => 100);
-- no duplicates: nothing
SELECT count(*) FROM dedup_preview('audit.t', '{id}');

-- row_id of a table without primary key is {"ctid": ...}; 'first' = lowest ctid
CREATE TABLE audit.np (a int, b text);
INSERT INTO audit.np VALUES (1, 'x');
INSERT INTO audit.np VALUES (1, 'x');
INSERT INTO audit.np VALUES (2, 'y');
INSERT INTO audit.np VALUES (1, 'x');
-- expect (0,1) keep, (0,2) delete, (0,4) delete
SELECT row_id, decision, key_values FROM dedup_preview('audit.np', '{a,b}')
 ORDER BY row_id::text;
-- 'last' = highest ctid: (0,4) keep
SELECT row_id, decision FROM dedup_preview('audit.np', '{a,b}', keep => 'last')
 ORDER BY row_id::text;
SELECT * FROM dedup_audit('audit.np', '{a,b}');

-- row_id of a composite primary key names every pk column
CREATE TABLE audit.cpk (k1 int, k2 text, v int, PRIMARY KEY (k1, k2));
INSERT INTO audit.cpk VALUES (1, 'a', 7), (1, 'b', 7), (2, 'a', 7), (3, 'a', 8);
-- expect {"k1": 1, "k2": "a"} keep, (1,b) and (2,a) delete
SELECT row_id, decision, key_values FROM dedup_preview('audit.cpk', '{v}')
 ORDER BY row_id::text;
SELECT row_id, decision FROM dedup_preview('audit.cpk', '{v}', keep => 'last')
 ORDER BY row_id::text;

-- nothing above changed anything: same data, no job row, no archive
SELECT md5(string_agg(t::text, ',' ORDER BY id)) = :'t_md5' AS t_unchanged FROM audit.t;
SELECT count(*) - :njobs AS new_jobs FROM dedup_jobs;
SELECT count(*) AS archives FROM pg_class
 WHERE relnamespace = 'dedup_archive'::regnamespace
   AND relname ~ '^(t|np|cpk|num|doc|empty)_[0-9]+$';

RESET search_path;
