/*
 * archive.c
 *		Archive tables: created, granted, closed, checked and dropped.
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
#include "access/xact.h"
#include "commands/comment.h"
#include "common/string.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(dedup_drop_archive);

/*
 * The dedup_* columns that follow the table's own columns in an archive.
 * dedup_xact, the transaction that renamed, re-pointed or (from a merge's
 * referencing table, as a collision) removed the row (NULL for the table's
 * own removed rows: each is removed once), orders the entries of a row that a
 * background job changed in two passes; the heap's order does not, since
 * space freed by an aborted batch's entries is used again.  Archives written
 * before it was added have no dedup_xact.
 */
#define ARCHIVE_OWN_COLUMNS \
	"dedup_job_id pg_catalog.int8 NOT NULL, dedup_action pg_catalog.text NOT NULL," \
	" dedup_new_value pg_catalog.text, dedup_survivor pg_catalog.jsonb, dedup_xact pg_catalog.xid8"

/*
 * An archive has the table's columns, then its own: a table with a column
 * of one of those names cannot have one.  Refused before the job changes
 * anything.
 */
void
archive_refuse_own_names(Oid relid)
{
	static const char *const own[] = {"dedup_job_id", "dedup_action", "dedup_new_value",
	"dedup_survivor", "dedup_xact"};

	for (int i = 0; i < lengthof(own); i++)
		if (get_attnum(relid, own[i]) != InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("table %s has a column named \"%s\", which archive tables reserve",
							quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													   get_rel_name(relid)), own[i]),
					 errdetail("An archive table has the table's columns, then dedup_job_id, dedup_action, dedup_new_value, dedup_survivor and dedup_xact."),
					 errhint("Rename the column, or run with archive => false (the job then cannot be rolled back).")));
}

/*
 * How many of an archive's columns are the table's: those before
 * dedup_job_id, its first own column (archive_refuse_own_names).
 */
int
archive_table_natts(TupleDesc desc)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), "dedup_job_id") == 0)
			return i;
	elog(ERROR, "archive table has no column dedup_job_id");
	pg_unreachable();
}

/* "name type [COLLATE c]" of a column, for an archive's CREATE TABLE */
static char *
column_def(Form_pg_attribute att)
{
	char	   *def = psprintf("%s %s", quote_identifier(NameStr(att->attname)),
							   format_type_extended(att->atttypid, att->atttypmod,
													FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));

	if (OidIsValid(att->attcollation) && att->attcollation != get_typcollation(att->atttypid))
		def = psprintf("%s COLLATE %s", def, generate_collation_name(att->attcollation));
	return def;
}

/*
 * Create the archive of a table for a job: dedup_archive.<table>_<job_id>,
 * or <table>_<job_id>_<tag> for the other tables a job touches.  It has the
 * table's columns and the dedup_* columns; with only, it has just the named
 * columns ("ctid" becoming dedup_ctid), which is how a backfill remembers
 * the rows it linked without copying them.  Who may read and write it:
 * archive_grant.
 */
static void archive_grant(const char *qname, Oid relowner, Oid writer);
static void archive_skip_user_types(const char *qname);
static void archive_regrant(const char *archive, Oid oid, Oid relid, Oid writer);

char *
archive_create(Oid relid, int64 job_id, const char *tag, Oid writer, List *only)
{
	Relation	rel = relation_open(relid, NoLock);
	TupleDesc	desc = RelationGetDescr(rel);
	const char *relname = RelationGetRelationName(rel);
	char	   *qname = archive_name(relname, job_id, tag);
	Oid			relowner = rel->rd_rel->relowner;
	char	   *source = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												   relname);
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TABLE %s (", qname);
	if (only == NIL)
	{
		archive_refuse_own_names(relid);
		for (int i = 0; i < desc->natts; i++)
			if (!TupleDescAttr(desc, i)->attisdropped)
				appendStringInfo(&sql, "%s, ", column_def(TupleDescAttr(desc, i)));
		appendStringInfoString(&sql, ARCHIVE_OWN_COLUMNS ")");
	}
	else
	{
		ListCell   *lc;

		foreach(lc, only)
		{
			AttrNumber	att = get_attnum(relid, lfirst(lc));

			appendStringInfo(&sql, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
							 att == SelfItemPointerAttributeNumber ? "dedup_ctid pg_catalog.tid" :
							 column_def(TupleDescAttr(desc, att - 1)));
		}
		appendStringInfoChar(&sql, ')');
	}
	relation_close(rel, NoLock);

	spi_exec_as_owner(sql.data, 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("COMMENT ON TABLE %s IS %s", qname,
							   sql_literal(psprintf("dedup_ext: rows removed or changed in %s by job %lld",
													source, (long long) job_id))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	archive_grant(qname, relowner, writer);
	return qname;
}

/*
 * ANALYZE of a table (autovacuum's, a superuser's database-wide one) runs as
 * its owner, for an archive the extension's: the functions of a type a user
 * made (a range type's subtype_diff) would run with those rights.  Its
 * columns of such types get no statistics (STATISTICS 0: ANALYZE skips
 * them); those of built-in types still do.
 */
static void
archive_skip_user_types(const char *qname)
{
	Relation	arel = relation_open(dedup_relid_by_name(qname), AccessShareLock);
	TupleDesc	desc = RelationGetDescr(arel);
	StringInfoData sql;

	initStringInfo(&sql);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && att->atttypid >= FirstNormalObjectId)
			appendStringInfo(&sql, "%s ALTER COLUMN %s SET STATISTICS 0", sql.len > 0 ? "," : "",
							 quote_identifier(NameStr(att->attname)));
	}
	relation_close(arel, AccessShareLock);
	if (sql.len > 0)
		spi_exec_as_owner(psprintf("ALTER TABLE %s%s", qname, sql.data), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
}

/*
 * The archives a job's row j names, as x(n): its table's, its referencing
 * tables' (a merge's), a backfill's lists of linked, deleted and created
 * rows.  Some are NULL.
 */
#define JOB_ARCHIVES \
	" LATERAL (SELECT j.archive_table::pg_catalog.text" \
	"  UNION ALL SELECT e OPERATOR(pg_catalog.->>) 'archive'" \
	"  FROM pg_catalog.jsonb_array_elements(COALESCE(j.ref_archives, '[]')) e" \
	"  UNION ALL SELECT j.undo OPERATOR(pg_catalog.->>) f" \
	"  FROM pg_catalog.unnest('{linked,deleted,created}'::pg_catalog.text[]) f) x(n)"

/*
 * The rows of an archive that the job removed, and those it changed in
 * place: 'rename' in a dedup's own archive, 'repoint' in a merge's archive
 * of a re-pointed table
 */
void
archive_counts(const char *archive, const char *changed, int64 *deleted, int64 *nchanged)
{
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FILTER (WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'),"
							   " pg_catalog.count(*) FILTER (WHERE a.dedup_action OPERATOR(pg_catalog.=) %s)"
							   " FROM %s a", sql_literal(changed), archive),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	*deleted = spi_get_int64(0, 1);
	*nchanged = spi_get_int64(0, 2);
}

/* rows in archive (NULL: none) */
static int64
archive_rows(const char *archive)
{
	if (archive == NULL)
		return 0;
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FROM %s", archive),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	return spi_get_int64(0, 1);
}

/*
 * What a backfill's lists hold (have) and what the job counted (want): the
 * linked, deleted and created rows, in that order.  The job counted the
 * created parents, and in rows_changed the three together.
 */
void
archive_backfill_counts(DedupJob *job, int64 have[3], int64 want[3])
{
	char	   *parents = json_field_text(job->undo, "parents_created");
	int64		ncreated = parents ? strtoll(parents, NULL, 10) : 0;

	have[0] = archive_rows(json_field_text(job->undo, "linked"));
	have[1] = archive_rows(json_field_text(job->undo, "deleted"));
	have[2] = archive_rows(json_field_text(job->undo, "created"));
	want[0] = job->rows_changed - job->rows_deleted - ncreated;
	want[1] = job->rows_deleted;
	want[2] = ncreated;
}

/*
 * A job that ends (done, failed or cancelled) writes to its archives no
 * more: from then on no one but the extension's owner may add rows to them
 * (rows added later, its rollback would put into the tables).  Their
 * readers keep SELECT.
 */
void
archive_close(int64 job_id)
{
	SPITupleTable *grants;

	spi_exec_as_owner(psprintf("SELECT x.n, a.grantee FROM %s.dedup_job j," JOB_ARCHIVES ","
							   " pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a"
							   " WHERE j.job_id OPERATOR(pg_catalog.=) %lld AND x.n IS NOT NULL"
							   " AND c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(x.n)"
							   " AND a.privilege_type OPERATOR(pg_catalog.=) 'INSERT'"
							   " AND a.grantee OPERATOR(pg_catalog.<>) c.relowner",
							   dedup_ext_schema(), (long long) job_id),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	grants = SPI_tuptable;
	for (uint64 i = 0; i < grants->numvals; i++)
	{
		bool		isnull;
		Oid			grantee = DatumGetObjectId(SPI_getbinval(grants->vals[i], grants->tupdesc, 2, &isnull));

		spi_exec_as_owner(psprintf("REVOKE INSERT ON %s FROM %s CASCADE",
								   SPI_getvalue(grants->vals[i], grants->tupdesc, 1),
								   grantee == InvalidOid ? "PUBLIC" :
								   quote_identifier(GetUserNameFromId(grantee, false))),
						  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	}
}

/*
 * An archive belongs to the extension's owner, not to the table's: a rollback
 * or dedup_verify, which a superuser may run, reads it with the types and
 * rules it has, and its owner could change those (a column's type to one
 * whose cast runs code of theirs, the table into a view).  The table's owner
 * may read it and add rows (the jobs it runs write to it), and so may writer,
 * a role that is not the owner (a merge re-points rows of tables the caller
 * may change but does not own).
 */
static void
archive_grant(const char *qname, Oid relowner, Oid writer)
{
	archive_skip_user_types(qname);
	spi_exec_as_owner(psprintf("GRANT SELECT, INSERT ON %s TO %s", qname,
							   quote_identifier(GetUserNameFromId(relowner, false))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	if (OidIsValid(writer) && !has_privs_of_role(writer, relowner))
		spi_exec_as_owner(psprintf("GRANT SELECT, INSERT ON %s TO %s", qname,
								   quote_identifier(GetUserNameFromId(writer, false))),
						  0, NULL, NULL, NULL, SPI_OK_UTILITY);
}

/*
 * ", <value>" of dedup_xact for a row filed in archive:
 * the batch's transaction, computed once per statement (an InitPlan).  An
 * archive made by an earlier version (a background job submitted before an
 * upgrade) has no such column: nothing then.
 */
char *
archive_xact_value(const char *archive)
{
	return get_attnum(dedup_relid_by_name(archive), "dedup_xact") != InvalidAttrNumber ?
		", (SELECT pg_catalog.pg_current_xact_id())" : "";
}

/*
 * Drop archive (quoted, qualified) if the job filed nothing in it: a run that
 * found nothing to change (a nightly job, most nights) leaves no empty table
 * behind.  Returns whether it is gone (dropped by hand before counts too).
 */
bool
archive_drop_if_empty(const char *archive)
{
	/* dropped by hand: nothing left to drop, and nothing to point at */
	if (!OidIsValid(dedup_relid_by_name(archive)))
		return true;
	spi_exec_as_owner(psprintf("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", archive),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM %s LIMIT 1) a", archive),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (spi_get_int64(0, 1) > 0)
		return false;
	spi_exec_as_owner(psprintf("DROP TABLE %s", archive), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return true;
}

/*
 * archive_drop_if_empty in a subtransaction: a reader's view on the
 * archive keeps it (DROP fails), and the caller goes on (false)
 */
bool
archive_drop_if_empty_quietly(const char *archive)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool dropped = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		dropped = archive_drop_if_empty(archive);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	return dropped;
}

/* <table>_<job>[_<tag>], the table's name clipped to fit, unquoted */
static char *
archive_relname(const char *relname, int64 job_id, const char *tag)
{
	char	   *suffix = psprintf("_%lld%s%s", (long long) job_id, tag ? "_" : "", tag ? tag : "");
	int			len = pg_mbcliplen(relname, strlen(relname), NAMEDATALEN - 1 - strlen(suffix));

	return psprintf("%.*s%s", len, relname, suffix);
}

/* dedup_archive.<table>_<job>[_<tag>], quoted */
char *
archive_name(const char *relname, int64 job_id, const char *tag)
{
	return quote_qualified_identifier("dedup_archive", archive_relname(relname, job_id, tag));
}

/*
 * Make heap, a relation with the table's row layout that holds the rows a
 * job removed (a rewrite's old storage), the table's archive for the job:
 * moved to dedup_archive, renamed as archive_create() would name it, and
 * given the dedup_* columns.  Their values are the same for every row, so
 * they are added with constant defaults, which changes only the catalog:
 * no row is read or written.
 */
char *
archive_adopt(Oid heap, Oid relid, int64 job_id)
{
	const char *relname = get_rel_name(relid);
	char	   *qname = archive_name(relname, job_id, NULL);

	spi_exec_as_owner(psprintf("ALTER TABLE %s SET SCHEMA dedup_archive",
							   quote_qualified_identifier(get_namespace_name(get_rel_namespace(heap)),
														  get_rel_name(heap))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("ALTER TABLE %s RENAME TO %s",
							   quote_qualified_identifier("dedup_archive", get_rel_name(heap)),
							   quote_identifier(archive_relname(relname, job_id, NULL))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("ALTER TABLE %s ADD COLUMN dedup_job_id pg_catalog.int8 DEFAULT %lld,"
							   " ADD COLUMN dedup_action pg_catalog.text DEFAULT 'delete',"
							   " ADD COLUMN dedup_new_value pg_catalog.text,"
							   " ADD COLUMN dedup_survivor pg_catalog.jsonb,"
							   " ADD COLUMN dedup_xact pg_catalog.xid8",
							   qname, (long long) job_id),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("ALTER TABLE %s OWNER TO %s", qname,
							   quote_identifier(GetUserNameFromId(dedup_ext_owner(), false))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	archive_grant(qname, get_rel_owner(relid), InvalidOid);
	spi_exec_as_owner(psprintf("COMMENT ON TABLE %s IS %s", qname,
							   sql_literal(psprintf("dedup_ext: rows removed from %s by job %lld (its storage before the rewrite)",
													quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
																			   relname),
													(long long) job_id))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return qname;
}

/*
 * The first difference between the table's columns and its archive's, told
 * as the change that likely made it, or NULL
 */
static char *
column_change(Oid relid, Oid archiveid)
{
	Relation	rel;
	Relation	arel;
	TupleDesc	desc;
	TupleDesc	adesc;
	Form_pg_attribute *cols;
	Form_pg_attribute *acols;
	int			n = 0,
				an = 0,
				i;
	char	   *change = NULL;

	rel = relation_open(relid, AccessShareLock);
	arel = relation_open(archiveid, AccessShareLock);
	desc = RelationGetDescr(rel);
	adesc = RelationGetDescr(arel);
	cols = palloc(sizeof(Form_pg_attribute) * Max(desc->natts, 1));
	acols = palloc(sizeof(Form_pg_attribute) * Max(adesc->natts, 1));
	for (i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped)
			cols[n++] = TupleDescAttr(desc, i);
	for (i = 0; i < archive_table_natts(adesc); i++)
		if (!TupleDescAttr(adesc, i)->attisdropped)
			acols[an++] = TupleDescAttr(adesc, i);

	for (i = 0; i < Min(n, an) && change == NULL; i++)
	{
		const char *name = NameStr(cols[i]->attname);
		const char *aname = NameStr(acols[i]->attname);

		if (strcmp(name, aname) != 0)
			change = get_attnum(relid, aname) == InvalidAttrNumber ?
				psprintf("column %s was dropped or renamed", quote_identifier(aname)) :
				psprintf("column %s is where column %s was", quote_identifier(name), quote_identifier(aname));
		else if (cols[i]->atttypid != acols[i]->atttypid || cols[i]->atttypmod != acols[i]->atttypmod)
			change = psprintf("column %s changed its type", quote_identifier(name));
	}
	if (change == NULL && n != an)
		change = n > an ? psprintf("column %s was added", quote_identifier(NameStr(cols[an]->attname)))
			: psprintf("column %s was dropped or renamed", quote_identifier(NameStr(acols[n]->attname)));
	/* the locks stay until the batch commits: no ALTER TABLE in between */
	relation_close(arel, NoLock);
	relation_close(rel, NoLock);
	return change;
}

/*
 * A background job's batches file the rows they remove by position (DELETE
 * ... RETURNING r.* into the archive), and the archive has the columns the
 * table had when the job began.  The job holds no lock on the table between
 * two batches, so an ALTER TABLE may add, drop, rename or retype a column
 * meanwhile: then the next batch would file values under the wrong columns.
 * Checked at the start of every batch; the job fails rather than do that
 * (its committed batches are archived as they should be).
 */
void
archive_check_columns(Oid relid, const char *archive, int64 job_id)
{
	Oid			archiveid = dedup_relid_by_name(archive);
	char	   *change;

	if (!OidIsValid(archiveid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("archive table %s of job %lld no longer exists", archive, (long long) job_id),
				 errdetail("A batch archives every row it removes or changes; without the archive it cannot.")));
	change = column_change(relid, archiveid);
	if (change)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the columns of table %s changed while job %lld ran: %s",
						quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid)),
						(long long) job_id, change),
				 errdetail("Archive table %s has the columns the table had when the job began; rows removed from now on would be filed under the wrong ones.",
						   archive),
				 errhint("The batches committed so far are archived; dedup_rollback of the job puts them back if the table gets those columns again. Submit a new job for the rest.")));
}

/*
 * A background job's archive is made when it is submitted.  A column added,
 * dropped or retyped later in the submitting transaction, or before the
 * job's first batch (a migration's next step, say), changes nothing the job
 * has archived yet: the worker, loading a job that has run no batch, makes
 * the archive again, empty, with the table's columns now (and its name now,
 * if the table was renamed), instead of failing the job.  Returns the new
 * archive, or NULL when it is as it should be (or gone, or not empty, or
 * kept by a view on it: archive_check_columns then says why).
 */
char *
archive_renew(Oid relid, const char *archive, int64 job_id)
{
	Oid			archiveid = dedup_relid_by_name(archive);

	if (!OidIsValid(archiveid) || column_change(relid, archiveid) == NULL ||
		!archive_drop_if_empty_quietly(archive))
		return NULL;
	return archive_create(relid, job_id, NULL, InvalidOid, NIL);
}

/*
 * An archive that a rollback or dedup_verify reads must be as the job left
 * it: a plain table of the extension's owner, without rules, triggers or
 * row-level security.  (One from before 1.4 that its owner had changed so
 * was left to them by the update; what it holds is not the job's word.)
 * relid: the table whose rows it holds (InvalidOid: none to grant to);
 * writer: the role besides its owner that may write to it (a merge's
 * submitter for a referencing table's archive; InvalidOid: none).
 */
void
archive_require_intact(const char *archive, int64 job_id, Oid relid, Oid writer)
{
	Oid			oid = dedup_relid_by_name(archive);
	HeapTuple	tup;
	Form_pg_class c;
	bool		intact;

	if (!OidIsValid(oid))
		return;					/* the caller says it is gone */
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", oid);
	c = (Form_pg_class) GETSTRUCT(tup);
	intact = c->relkind == RELKIND_RELATION && !c->relhasrules && !c->relhastriggers &&
		!c->relrowsecurity && c->relowner == dedup_ext_owner();
	ReleaseSysCache(tup);
	if (!intact)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("archive table %s of job %lld is not as the job left it", archive, (long long) job_id),
				 errdetail("It is not a plain table of the extension's owner without rules, triggers or row-level security, so what it holds cannot be taken for what the job archived."),
				 errhint("Compare it with the table by hand; dedup_drop_archive(%lld) drops it.", (long long) job_id)));

	if (OidIsValid(relid) && !XactReadOnly)
		archive_regrant(archive, oid, relid, writer);
}

/*
 * The table whose rows archive holds may have changed hands since the job
 * (archive_grant gave the owner of then): its owner now may read the
 * archive, and no one else but writer (the one before could read rows of a
 * table it no longer owns).  Done under a lock on the archive, so that two
 * sessions do not grant at once.
 */
static void
archive_regrant(const char *archive, Oid oid, Oid relid, Oid writer)
{
	Oid			owner = get_rel_owner(relid);
	Oid			types[3] = {OIDOID, OIDOID, OIDOID};
	Datum		values[3] = {ObjectIdGetDatum(oid), ObjectIdGetDatum(owner), ObjectIdGetDatum(writer)};
	const char *others = "SELECT DISTINCT a.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a"
		" WHERE c.oid OPERATOR(pg_catalog.=) $1 AND a.grantee OPERATOR(pg_catalog.<>) c.relowner"
		" AND a.grantee OPERATOR(pg_catalog.<>) $2 AND a.grantee OPERATOR(pg_catalog.<>) $3";
	SPITupleTable *grantees;

	LockRelationOid(oid, ShareUpdateExclusiveLock);
	spi_exec_as_owner(others, 3, types, values, NULL, SPI_OK_SELECT);
	grantees = SPI_tuptable;
	if (grantees->numvals == 0 && pg_class_aclcheck(oid, owner, ACL_SELECT) == ACLCHECK_OK)
		return;					/* as archive_grant left it */
	for (uint64 i = 0; i < grantees->numvals; i++)
	{
		bool		isnull;
		Oid			grantee = DatumGetObjectId(SPI_getbinval(grantees->vals[i], grantees->tupdesc, 1, &isnull));

		spi_exec_as_owner(psprintf("REVOKE ALL ON %s FROM %s CASCADE", archive,
								   grantee == InvalidOid ? "PUBLIC" :
								   quote_identifier(GetUserNameFromId(grantee, false))),
						  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	}
	/* SELECT only: the job has ended (archive_close) */
	spi_exec_as_owner(psprintf("GRANT SELECT ON %s TO %s", archive,
							   quote_identifier(GetUserNameFromId(owner, false))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
}

/*
 * Drop archive table name (qualified) of job job_id if it is still there;
 * true if it was.  Only the job's own: a table a superuser made under that
 * name since does not say, in its comment, that the job made it.
 */
static bool
drop_archive_table(const char *name, int64 job_id)
{
	Oid			oid = name ? dedup_relid_by_name(name) : InvalidOid;
	char	   *comment;
	char	   *by_job;

	if (!OidIsValid(oid))
		return false;
	comment = GetComment(oid, RelationRelationId, 0);
	by_job = psprintf(" by job %lld", (long long) job_id);
	/* as archive_create and archive_adopt wrote it: " by job N" ends it, or the adopted one's note */
	if (comment == NULL || strncmp(comment, "dedup_ext: ", 11) != 0 ||
		!(pg_str_endswith(comment, by_job) ||
		  pg_str_endswith(comment, psprintf("%s (its storage before the rewrite)", by_job))))
		return false;
	/* one its owner made a view before 1.4 (archive_require_intact) goes too */
	spi_exec_as_owner(psprintf("DROP %s %s", get_rel_relkind(oid) == RELKIND_VIEW ? "VIEW" : "TABLE", name),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return true;
}

/*
 * Give up a job's rollback: drop the archive tables it keeps (its table's,
 * its re-pointed tables', a backfill's lists of linked, deleted and created
 * rows).  Archives belong to the extension's owner (archive_grant), so this
 * is how the job's submitter reclaims their space.  Returns the number of
 * tables dropped.  A job still in progress keeps writing to its archive.
 */
Datum
dedup_drop_archive(PG_FUNCTION_ARGS)
{
	int64		job_id;
	DedupJob   *job;
	int32		dropped = 0;
	SPITupleTable *archives;

	dedup_require_arg(fcinfo, 0, "job_id");
	job_id = PG_GETARG_INT64(0);
	PreventCommandIfReadOnly("dedup_drop_archive()");

	SPI_connect();
	job = job_fetch(job_id, true, true);
	if (strcmp(job->state, "done") != 0 && strcmp(job->state, "failed") != 0 &&
		strcmp(job->state, "cancelled") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld is %s; only a finished job's archive can be dropped",
						(long long) job_id, job_effective_state(job_id)),
				 errhint("Let it finish, or cancel it with dedup_cancel(%lld).", (long long) job_id)));

	spi_exec_as_owner(psprintf("SELECT x.n FROM %s.dedup_job j," JOB_ARCHIVES
							   " WHERE j.job_id OPERATOR(pg_catalog.=) %lld AND x.n IS NOT NULL",
							   dedup_ext_schema(), (long long) job_id),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	archives = SPI_tuptable;
	for (uint64 i = 0; i < archives->numvals; i++)
		dropped += drop_archive_table(SPI_getvalue(archives->vals[i], archives->tupdesc, 1), job_id);

	/*
	 * The job's row no longer names them: its rollback says it has none.  A
	 * backfill's undo keeps the rest (its constraint, fk_column, counts),
	 * which dedup_verify reads.
	 */
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET archive_table = NULL, ref_archives = NULL,"
							   " undo = undo OPERATOR(pg_catalog.-) 'linked'::pg_catalog.text"
							   " OPERATOR(pg_catalog.-) 'deleted'::pg_catalog.text"
							   " OPERATOR(pg_catalog.-) 'created'::pg_catalog.text"
							   " WHERE job_id OPERATOR(pg_catalog.=) %lld",
							   dedup_ext_schema(), (long long) job_id),
					  0, NULL, NULL, NULL, SPI_OK_UPDATE);
	SPI_finish();
	PG_RETURN_INT32(dropped);
}
