-- dedup_ext 1.0: the SQL contract of ../shared/design/API.md.
\echo Use "CREATE EXTENSION dedup_ext" to load this file. \quit

-- Archives: one table per job, owned by the owner of the deduplicated table.
CREATE SCHEMA dedup_archive;
GRANT USAGE ON SCHEMA dedup_archive TO PUBLIC;

-- Every call that changes data is a row here.  Written only by the C code,
-- which switches to the extension owner for it; users read it through the
-- dedup_jobs view, which shows each role its own jobs.
CREATE TABLE dedup_job (
    job_id          bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('dedup', 'backfill', 'rollback')),
    relation        oid NOT NULL,
    relation_name   text NOT NULL,
    params          jsonb NOT NULL,
    state           text NOT NULL CHECK (state IN ('queued', 'running', 'paused', 'done',
                                                   'failed', 'cancelled', 'interrupted')),
    submitted_by    oid NOT NULL,
    submitted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    rows_total      bigint,
    rows_done       bigint NOT NULL DEFAULT 0,
    rows_changed    bigint NOT NULL DEFAULT 0,
    batches_done    bigint NOT NULL DEFAULT 0,
    error           text,
    strategy        text,
    duplicate_groups bigint,
    rows_deleted    bigint NOT NULL DEFAULT 0,
    rows_renamed    bigint NOT NULL DEFAULT 0,
    refs_repointed  bigint NOT NULL DEFAULT 0,
    refs_removed    bigint NOT NULL DEFAULT 0,
    ref_archives    jsonb,
    undo            jsonb,
    archive_table   text,
    unique_index    text,
    unique_is_constraint boolean NOT NULL DEFAULT false,
    target_job      bigint REFERENCES dedup_job (job_id),
    rolled_back_by  bigint REFERENCES dedup_job (job_id)
);
REVOKE ALL ON dedup_job FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('dedup_job', '');
SELECT pg_catalog.pg_extension_config_dump('dedup_job_job_id_seq', '');

CREATE VIEW dedup_jobs AS
SELECT j.job_id, j.kind,
       j.relation::pg_catalog.regclass AS relation,
       j.params, j.state,
       pg_catalog.pg_get_userbyid(j.submitted_by) AS submitted_by,
       j.submitted_at, j.started_at, j.finished_at,
       j.rows_done, j.rows_changed, j.error,
       j.rows_total, j.batches_done, j.strategy, j.duplicate_groups,
       j.rows_deleted, j.rows_renamed, j.refs_repointed,
       pg_catalog.to_regclass(j.archive_table) AS archive_table,
       pg_catalog.to_regclass(j.unique_index) AS unique_index,
       j.target_job, j.rolled_back_by, j.relation_name, j.refs_removed, j.ref_archives
  FROM @extschema@.dedup_job j
 WHERE j.submitted_by = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)
    OR pg_catalog.pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE');
GRANT SELECT ON dedup_jobs TO PUBLIC;

-- Rows backfill_fk could not link: no parent has their key (orphan), or
-- several do (ambiguous).  Visible with the job they belong to.
CREATE TABLE dedup_orphan (
    job_id      bigint NOT NULL REFERENCES dedup_job (job_id),
    row_id      jsonb NOT NULL,
    key_values  jsonb NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('orphan', 'ambiguous'))
);
CREATE INDEX ON dedup_orphan (job_id);
REVOKE ALL ON dedup_orphan FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('dedup_orphan', '');

CREATE VIEW dedup_orphans AS
SELECT o.job_id, o.row_id, o.key_values, o.reason
  FROM @extschema@.dedup_orphan o
 WHERE o.job_id IN (SELECT j.job_id FROM @extschema@.dedup_jobs j);
GRANT SELECT ON dedup_orphans TO PUBLIC;

CREATE FUNCTION dedup_audit(rel regclass, key text[], filter text DEFAULT NULL,
                            nulls_distinct boolean DEFAULT true)
RETURNS TABLE (total_rows bigint, distinct_keys bigint, duplicate_groups bigint,
               duplicate_rows bigint, largest_group bigint, null_key_rows bigint)
AS 'MODULE_PATHNAME', 'dedup_audit' LANGUAGE C CALLED ON NULL INPUT;

CREATE FUNCTION dedup_groups(rel regclass, key text[], filter text DEFAULT NULL,
                             nulls_distinct boolean DEFAULT true, max_groups integer DEFAULT 50)
RETURNS TABLE (key_values jsonb, group_rows bigint)
AS 'MODULE_PATHNAME', 'dedup_groups' LANGUAGE C CALLED ON NULL INPUT;

CREATE FUNCTION dedup_preview(rel regclass, key text[], keep text DEFAULT 'first',
                              action text DEFAULT 'delete', filter text DEFAULT NULL,
                              nulls_distinct boolean DEFAULT true, max_rows integer DEFAULT 100)
RETURNS TABLE (group_no bigint, row_id jsonb, decision text, key_values jsonb, new_value text)
AS 'MODULE_PATHNAME', 'dedup_preview' LANGUAGE C CALLED ON NULL INPUT;

CREATE FUNCTION dedup_table(rel regclass, key text[],
                            keep text DEFAULT 'first',
                            action text DEFAULT 'delete',
                            filter text DEFAULT NULL,
                            nulls_distinct boolean DEFAULT true,
                            archive boolean DEFAULT true,
                            add_unique boolean DEFAULT false,
                            dry_run boolean DEFAULT false,
                            background boolean DEFAULT false,
                            batch_size integer DEFAULT NULL,
                            strategy text DEFAULT 'auto')
RETURNS TABLE (job_id bigint, state text, strategy text, duplicate_groups bigint,
               rows_deleted bigint, rows_renamed bigint, refs_repointed bigint,
               archive_table regclass, unique_index regclass)
AS 'MODULE_PATHNAME', 'dedup_table' LANGUAGE C CALLED ON NULL INPUT;

CREATE FUNCTION dedup_rollback(job_id bigint) RETURNS bigint
AS 'MODULE_PATHNAME', 'dedup_rollback' LANGUAGE C CALLED ON NULL INPUT;

CREATE FUNCTION dedup_verify(job_id bigint)
RETURNS TABLE (check_name text, ok boolean, detail text)
AS 'MODULE_PATHNAME', 'dedup_verify' LANGUAGE C CALLED ON NULL INPUT;

CREATE FUNCTION backfill_fk(child regclass, fk_column text, parent regclass, child_key text[],
                            parent_key text[] DEFAULT NULL,
                            parent_column text DEFAULT NULL,
                            on_orphan text DEFAULT 'report',
                            add_constraint boolean DEFAULT false,
                            archive boolean DEFAULT true,
                            dry_run boolean DEFAULT false,
                            background boolean DEFAULT false,
                            batch_size integer DEFAULT NULL)
RETURNS TABLE (job_id bigint, state text, rows_updated bigint, orphan_rows bigint,
               ambiguous_rows bigint, parents_created bigint, rows_deleted bigint,
               constraint_name text)
AS 'MODULE_PATHNAME', 'backfill_fk' LANGUAGE C CALLED ON NULL INPUT;
