/*
 * archive.c
 *		Archive tables and dedup_rollback.
 *
 * A job that removes or changes rows first keeps their original versions in
 * dedup_archive.<table>_<job_id>: the table's columns, same names, types and
 * order, then the dedup_* columns.  The archive is created by the extension
 * owner (users cannot create objects in dedup_archive) and handed to the
 * table's owner, so only the table's owner (and superusers) can read it.
 * Rows are written into it by the caller, inside the same statement that
 * removes them from the table.
 */
#include "dedup_ext.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(dedup_rollback);

/* The dedup_* columns that follow the table's own columns in an archive. */
#define ARCHIVE_OWN_COLUMNS \
	"dedup_job_id pg_catalog.int8 NOT NULL, dedup_action pg_catalog.text NOT NULL," \
	" dedup_new_value pg_catalog.text, dedup_survivor pg_catalog.jsonb"

char *
archive_create(DedupTarget *t, int64 job_id)
{
	Relation	rel = relation_open(t->relid, NoLock);
	TupleDesc	desc = RelationGetDescr(rel);
	char	   *suffix = psprintf("_%lld", (long long) job_id);
	int			len = pg_mbcliplen(t->relname, strlen(t->relname),
								   NAMEDATALEN - 1 - strlen(suffix));
	char	   *qname = quote_qualified_identifier("dedup_archive",
												   psprintf("%.*s%s", len, t->relname, suffix));
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TABLE %s (", qname);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		appendStringInfo(&sql, "%s %s", quote_identifier(NameStr(att->attname)),
						 format_type_extended(att->atttypid, att->atttypmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
		if (OidIsValid(att->attcollation) &&
			att->attcollation != get_typcollation(att->atttypid))
			appendStringInfo(&sql, " COLLATE %s", generate_collation_name(att->attcollation));
		appendStringInfoString(&sql, ", ");
	}
	appendStringInfoString(&sql, ARCHIVE_OWN_COLUMNS ")");
	relation_close(rel, NoLock);

	spi_exec_as_owner(sql.data, 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("COMMENT ON TABLE %s IS %s", qname,
							   sql_literal(psprintf("dedup_ext: rows removed or changed in %s by job %lld",
													t->qualname, (long long) job_id))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("ALTER TABLE %s OWNER TO %s", qname,
							   quote_identifier(GetUserNameFromId(t->relowner, false))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return qname;
}

/*
 * "a, b, c": the archive's copy of the table's columns that can be written
 * back, i.e. without the dedup_* columns and without the table's generated
 * columns, which recompute themselves.
 */
static char *
restorable_columns(Oid archive, Oid relid)
{
	Relation	arel = relation_open(archive, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(arel);
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		AttrNumber	attnum;

		if (att->attisdropped || strncmp(name, "dedup_", 6) == 0)
			continue;
		attnum = get_attnum(relid, name);
		if (attnum != InvalidAttrNumber && get_attgenerated(relid, attnum))
			continue;
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "", quote_identifier(name));
	}
	relation_close(arel, AccessShareLock);
	return buf.data;
}

static void
drop_unique(DedupJob *job, const char *qualname)
{
	Oid			idx = dedup_relid_by_name(job->unique_index);

	if (!OidIsValid(idx))
		return;					/* dropped by hand meanwhile: nothing to undo */
	if (job->unique_is_constraint)
		spi_exec_count(psprintf("ALTER TABLE %s DROP CONSTRAINT %s", qualname,
								quote_identifier(get_rel_name(idx))), SPI_OK_UTILITY);
	else
		spi_exec_count(psprintf("DROP INDEX %s", job->unique_index), SPI_OK_UTILITY);
}

/*
 * Undo a dedup job: drop the unique index it added, put back the rows it
 * removed (same ids: identity columns are overridden), set renamed keys back,
 * and drop the archive.  Runs in the caller's transaction, like the job.
 */
Datum
dedup_rollback(PG_FUNCTION_ARGS)
{
	int64		job_id;
	DedupJob   *job;
	DedupTarget *t;
	Oid			archive;
	char	   *rename_column;
	char	   *cols;
	int64		rb_job,
				restored = 0;

	dedup_require_arg(fcinfo, 0, "job_id");
	job_id = PG_GETARG_INT64(0);

	SPI_connect();
	job = job_fetch(job_id, true, true);
	if (strcmp(job->kind, "dedup") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("job %lld is a %s job; only dedup jobs can be rolled back",
						(long long) job_id, job->kind)));
	if (job->rolled_back_by != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld was already rolled back by job %lld",
						(long long) job_id, (long long) job->rolled_back_by)));
	if (strcmp(job->state, "done") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld is %s; only a finished job can be rolled back",
						(long long) job_id, job->state)));
	if (job->archive_table == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld kept no archive, so it cannot be rolled back", (long long) job_id),
				 errdetail("It ran with archive => false.")));
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(job->relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the table of job %lld no longer exists", (long long) job_id)));
	archive = dedup_relid_by_name(job->archive_table);
	if (!OidIsValid(archive))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("archive table %s of job %lld no longer exists",
						job->archive_table, (long long) job_id)));

	/* the owner check and lock; the key is only needed for the primary key */
	t = dedup_target_open(job->relid, job_param_array(job, "key"), NULL, true,
						  true, ShareRowExclusiveLock);
	rb_job = job_create("rollback", job->relid, t->relname,
						psprintf("{\"job_id\": %lld}", (long long) job_id), job_id);

	/* first the unique index, or the restored duplicates would violate it */
	if (job->unique_index)
		drop_unique(job, t->qualname);

	cols = restorable_columns(archive, job->relid);
	restored += spi_exec_count(psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE"
										" SELECT %s FROM %s a WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'",
										t->qualname, cols, cols, job->archive_table),
							   SPI_OK_INSERT);

	rename_column = job_param(job, "rename_column");
	if (rename_column)
	{
		const char *col = quote_identifier(rename_column);

		restored += spi_exec_count(psprintf("UPDATE ONLY %s r SET %s = a.%s FROM %s a"
											" WHERE a.dedup_action OPERATOR(pg_catalog.=) 'rename' AND %s",
											t->qualname, col, col, job->archive_table,
											sql_pk_match(t, "r", "a")),
								   SPI_OK_UPDATE);
	}

	spi_exec_count(psprintf("DROP TABLE %s", job->archive_table), SPI_OK_UTILITY);
	job_finish(rb_job, NULL, 0, 0, 0, restored, NULL, NULL, false);
	job_mark_rolled_back(job_id, rb_job);
	SPI_finish();
	PG_RETURN_INT64(restored);
}
