--
-- quoting: identifiers that need quotes work everywhere ("Odd Schema"."Weird Table",
-- columns "select", "Mixed Case", "quo""te"); a same-named table in another schema
-- is not touched; long table names still get distinct archives.
--
CREATE SCHEMA "Odd Schema";
CREATE SCHEMA quoting;
SET search_path = quoting, public;

CREATE TABLE "Odd Schema"."Weird Table" (
    "ID"         int PRIMARY KEY,
    "select"     text NOT NULL,
    "Mixed Case" int NOT NULL,
    "quo""te"    text,
    "has space"  timestamp
);
INSERT INTO "Odd Schema"."Weird Table"
SELECT g, 's' || g % 3, g % 2, 'q' || g % 3, timestamp '2024-01-01' + g * interval '1 day'
  FROM generate_series(1, 12) g;
-- the same name in the search_path schema, same data
CREATE TABLE quoting."Weird Table" (LIKE "Odd Schema"."Weird Table" INCLUDING ALL);
INSERT INTO quoting."Weird Table" SELECT * FROM "Odd Schema"."Weird Table";

SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) AS odd_md5 FROM "Odd Schema"."Weird Table" w \gset
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) AS same_md5 FROM quoting."Weird Table" w \gset

-- key elements are plain column names; keep/filter are SQL and need the quotes.
-- ("select", "Mixed Case"): 6 keys of 2 rows -> expect 12 rows, 6 groups, 6 duplicate rows
SELECT * FROM dedup_audit('"Odd Schema"."Weird Table"', ARRAY['select', 'Mixed Case']);
SELECT * FROM dedup_audit('"Odd Schema"."Weird Table"', ARRAY['quo"te'],
                          filter => '"has space" > ''2024-01-03'' AND "select" <> ''s0''');
SELECT key_values, group_rows
  FROM dedup_groups('"Odd Schema"."Weird Table"', ARRAY['select', 'Mixed Case'])
 ORDER BY key_values::text;
-- keep '"has space" DESC': the later of each pair survives (7..12)
SELECT row_id, decision, key_values
  FROM dedup_preview('"Odd Schema"."Weird Table"', ARRAY['select', 'Mixed Case'],
                     keep => '"has space" DESC')
 ORDER BY (row_id->>'ID')::int;
-- rename: "select" (the last text key column) gets '-' || "ID"
SELECT row_id, decision, new_value
  FROM dedup_preview('"Odd Schema"."Weird Table"', ARRAY['select', 'Mixed Case'],
                     action => 'rename')
 ORDER BY (row_id->>'ID')::int;

-- delete with archive and constraint
CREATE TEMP TABLE r1 AS
SELECT * FROM dedup_table('"Odd Schema"."Weird Table"', ARRAY['select', 'Mixed Case'],
                          keep => '"has space" DESC', filter => '"quo""te" IS NOT NULL',
                          add_unique => false);
SELECT job_id AS jid1, archive_table AS arch1 FROM r1 \gset
SELECT state, duplicate_groups, rows_deleted,
       archive_table = format('dedup_archive.%I', 'Weird Table_' || job_id)::regclass AS archive_named_as_decided
  FROM r1;
SELECT "ID", "select", "Mixed Case" FROM "Odd Schema"."Weird Table" ORDER BY "ID";
SELECT a.attname FROM pg_attribute a
 WHERE a.attrelid = :'arch1'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum;
SELECT "ID", dedup_action, dedup_survivor FROM :arch1 ORDER BY "ID";
SELECT relation = '"Odd Schema"."Weird Table"'::regclass AS relation_ok FROM dedup_jobs WHERE job_id = :jid1;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid1);
-- the same-named table was not touched
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) = :'same_md5' AS untouched FROM quoting."Weird Table" w;
SELECT dedup_rollback(:jid1) AS restored;
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) = :'odd_md5' AS exact FROM "Odd Schema"."Weird Table" w;

-- rename with a unique constraint on quoted columns
CREATE TEMP TABLE r2 AS
SELECT * FROM dedup_table('"Odd Schema"."Weird Table"', ARRAY['select', 'Mixed Case'],
                          action => 'rename', add_unique => true);
SELECT job_id AS jid2 FROM r2 \gset
SELECT state, rows_renamed, unique_index FROM r2;
SELECT "ID", "select", "Mixed Case" FROM "Odd Schema"."Weird Table" ORDER BY "ID";
SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
 WHERE conrelid = '"Odd Schema"."Weird Table"'::regclass AND contype = 'u';
BEGIN;
INSERT INTO "Odd Schema"."Weird Table" AS w VALUES (13, 's1', 1, 'new', NULL)
ON CONFLICT ("select", "Mixed Case") DO UPDATE SET "quo""te" = EXCLUDED."quo""te"
RETURNING "ID", "select", "Mixed Case", "quo""te";
ROLLBACK;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid2);
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) = :'same_md5' AS untouched FROM quoting."Weird Table" w;
SELECT dedup_rollback(:jid2) AS restored;
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) = :'odd_md5' AS exact FROM "Odd Schema"."Weird Table" w;

-- the unqualified name means the search_path one, and only that one is changed
CREATE TEMP TABLE r3 AS SELECT * FROM dedup_table('"Weird Table"', ARRAY['quo"te']);
SELECT job_id AS jid3 FROM r3 \gset
SELECT state, rows_deleted FROM r3;
SELECT count(*) AS same_name_rows FROM quoting."Weird Table";
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) = :'odd_md5' AS odd_untouched FROM "Odd Schema"."Weird Table" w;
SELECT dedup_rollback(:jid3) AS restored;
SELECT md5(string_agg(w::text, ',' ORDER BY "ID")) = :'same_md5' AS exact FROM quoting."Weird Table" w;

-- a key column named like a keyword and with a quote, alone
SELECT row_id, decision, key_values
  FROM dedup_preview('"Odd Schema"."Weird Table"', ARRAY['quo"te'], filter => '"ID" <= 6')
 ORDER BY (row_id->>'ID')::int;

-- a 63-character table name: two jobs on it at once, two distinct archives
CREATE TABLE quoting.a_very_long_table_name_that_fills_all_sixty_three_characters_xy (id int PRIMARY KEY, k int);
SELECT length('a_very_long_table_name_that_fills_all_sixty_three_characters_xy') AS name_length;
INSERT INTO quoting.a_very_long_table_name_that_fills_all_sixty_three_characters_xy
SELECT g, g % 2 FROM generate_series(1, 8) g;
SELECT md5(string_agg(l::text, ',' ORDER BY id)) AS long_md5
  FROM quoting.a_very_long_table_name_that_fills_all_sixty_three_characters_xy l \gset
-- job 4 removes 3 and 4 (among ids <= 4), job 5 removes 5, 6, 7, 8
CREATE TEMP TABLE r4 AS
SELECT * FROM dedup_table('a_very_long_table_name_that_fills_all_sixty_three_characters_xy', '{k}',
                          filter => 'id <= 4');
CREATE TEMP TABLE r5 AS
SELECT * FROM dedup_table('a_very_long_table_name_that_fills_all_sixty_three_characters_xy', '{k}');
SELECT r4.state, r4.rows_deleted, r5.state, r5.rows_deleted,
       r4.archive_table <> r5.archive_table AS distinct_archives
  FROM r4, r5;
SELECT job_id AS jid4, archive_table AS arch4 FROM r4 \gset
SELECT job_id AS jid5, archive_table AS arch5 FROM r5 \gset
SELECT (SELECT count(*) FROM :arch4) AS archived4, (SELECT count(*) FROM :arch5) AS archived5;
SELECT length(relname) AS archive_name_length, relname LIKE 'a\_very\_long%' AS named_after_table
  FROM pg_class WHERE oid IN (:'arch4'::regclass, :'arch5'::regclass) ORDER BY oid;
SELECT id FROM quoting.a_very_long_table_name_that_fills_all_sixty_three_characters_xy ORDER BY id;
SELECT dedup_rollback(:jid5) AS restored5;
SELECT dedup_rollback(:jid4) AS restored4;
SELECT md5(string_agg(l::text, ',' ORDER BY id)) = :'long_md5' AS exact
  FROM quoting.a_very_long_table_name_that_fills_all_sixty_three_characters_xy l;

RESET search_path;
