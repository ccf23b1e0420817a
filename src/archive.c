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

#include "access/genam.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/sysattr.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/comment.h"
#include "common/string.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(dedup_rollback);
PG_FUNCTION_INFO_V1(dedup_drop_archive);

/*
 * The dedup_* columns that follow the table's own columns in an archive.
 * dedup_xact, the transaction that renamed or re-pointed the row (NULL for a
 * removed row: it is removed once), orders the entries of a row that a
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
static int
archive_table_natts(TupleDesc desc)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), "dedup_job_id") == 0)
			return i;
	elog(ERROR, "archive table has no column dedup_job_id");
	pg_unreachable();
}

/*
 * The order in which the entries of archive a were written: by dedup_xact,
 * then (within a transaction, or in an archive without it) by ctid.
 */
static char *
archive_write_order(const char *archive)
{
	return get_attnum(dedup_relid_by_name(archive), "dedup_xact") != InvalidAttrNumber ?
		"a.dedup_xact, a.ctid" : "a.ctid";
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
 * ", <value>" of dedup_xact for a renamed or re-pointed row filed in archive:
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
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM %s LIMIT 1) a", archive),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (spi_get_int64(0, 1) > 0)
		return false;
	spi_exec_as_owner(psprintf("DROP TABLE %s", archive), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return true;
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
 * "a, b, c": the archive's copy of the table's columns that can be written
 * back: those before the archive's own (archive_table_natts), without the
 * table's generated columns, which recompute themselves.  A column the
 * table no longer has, or has under a type its values cannot be assigned to,
 * refuses job_id's rollback (a column added since gets its default; one
 * widened, say int to bigint, takes the values by assignment).
 */
static char *
restorable_columns(Oid archive, Oid relid, int64 job_id)
{
	Relation	arel = relation_open(archive, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(arel);
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < archive_table_natts(desc); i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		AttrNumber	attnum;
		Oid			type;
		int32		typmod;
		Oid			coll;

		if (att->attisdropped)
			continue;
		attnum = get_attnum(relid, name);
		if (attnum != InvalidAttrNumber)
			get_atttypetypmodcoll(relid, attnum, &type, &typmod, &coll);
		if (attnum == InvalidAttrNumber ||
			!can_coerce_type(1, &att->atttypid, &type, COERCION_ASSIGNMENT))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: column %s of %s %s since the job",
							(long long) job_id, quote_identifier(name),
							quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													   get_rel_name(relid)),
							attnum == InvalidAttrNumber ? "was dropped or renamed" : "changed its type"),
					 errdetail("Archive table %s has the columns the table had then; its rows cannot be put back under others.",
							   quote_qualified_identifier("dedup_archive", RelationGetRelationName(arel))),
					 errhint("Give the table that column again, or restore the rows from the archive by hand.")));
		if (get_attgenerated(relid, attnum))
			continue;
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "", quote_identifier(name));
	}
	relation_close(arel, AccessShareLock);
	return buf.data;
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

	if (!OidIsValid(archiveid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("archive table %s of job %lld no longer exists", archive, (long long) job_id),
				 errdetail("A batch archives every row it removes or changes; without the archive it cannot.")));
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

	/* the first difference, told as the change that likely made it */
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
	if (change)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the columns of table %s changed while job %lld ran: %s",
						quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												   RelationGetRelationName(rel)),
						(long long) job_id, change),
				 errdetail("Archive table %s has the columns the table had when the job began; rows removed from now on would be filed under the wrong ones.",
						   archive),
				 errhint("The batches committed so far are archived; dedup_rollback of the job puts them back if the table gets those columns again. Submit a new job for the rest.")));
	/* the locks stay until the batch commits: no ALTER TABLE in between */
	relation_close(arel, NoLock);
	relation_close(rel, NoLock);
}

/*
 * Is idx an index of t's table (with same_key: a unique one on exactly the
 * columns of t's key, in any order)?
 */
static bool
unique_on_key(Oid idx, DedupTarget *t, bool same_key)
{
	HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(idx));
	Form_pg_index ix;
	bool		result;

	if (!HeapTupleIsValid(tup))
		return false;
	ix = (Form_pg_index) GETSTRUCT(tup);
	result = ix->indrelid == t->relid;
	if (result && same_key)
	{
		result = ix->indisunique && ix->indnkeyatts == t->nkeys;
		for (int i = 0; i < t->nkeys && result; i++)
		{
			AttrNumber	att = get_attnum(t->relid, t->keys[i].name);
			bool		found = false;

			for (int k = 0; k < ix->indnkeyatts; k++)
				found = found || ix->indkey.values[k] == att;
			result = found;
		}
	}
	ReleaseSysCache(tup);
	return result;
}

/*
 * The unique index job built, if it is still there: by the identity noted
 * when the job built it (unique_index_oid, 1.3), whatever its name is now;
 * else by its name, if that is a unique constraint's index on the job's key
 * columns (REINDEX CONCURRENTLY), and never another index that took its name.  *gone says the job built one
 * that is no longer there.  A job written before it was noted (or by a
 * database still at 1.2) is found by the name it recorded.
 */
static Oid
job_unique_index(DedupJob *job, DedupTarget *t, bool *gone)
{
	char	   *jobtable = psprintf("%s.dedup_job", dedup_ext_schema());
	Oid			idx = InvalidOid;
	bool		noted = false;

	*gone = false;
	if (job->unique_index == NULL)
		return InvalidOid;
	if (get_attnum(dedup_relid_by_name(jobtable), "unique_index_oid") != InvalidAttrNumber)
	{
		spi_exec_as_owner(psprintf("SELECT unique_index_oid FROM %s WHERE job_id OPERATOR(pg_catalog.=) %lld",
								   jobtable, (long long) job->job_id),
						  0, NULL, NULL, NULL, SPI_OK_SELECT);
		if (SPI_processed == 1)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			noted = !isnull;
			idx = isnull ? InvalidOid : DatumGetObjectId(d);
		}
	}
	if (!noted)
		return dedup_relid_by_name(job->unique_index);

	/* still an index of the job's table (an OID can be used again) */
	if (unique_on_key(idx, t, false))
		return idx;

	/*
	 * REINDEX CONCURRENTLY (or ALTER COLUMN TYPE) gives the job's index a
	 * new OID and keeps its name, and its constraint: when the job made a
	 * constraint, the index of that name is the job's while it is a unique
	 * index on exactly the job's key columns under a constraint (an index a
	 * user created after dropping the job's constraint has none).  A plain
	 * index of the job's (a partial one) is not told apart from one a user
	 * made under its name: taken as gone.
	 */
	idx = dedup_relid_by_name(job->unique_index);
	if (job->unique_is_constraint && OidIsValid(idx) && unique_on_key(idx, t, true) &&
		OidIsValid(get_index_constraint(idx)))
		return idx;
	*gone = true;
	return InvalidOid;
}

/* Drop the job's unique index idx (InvalidOid: dropped by hand meanwhile) */
static void
drop_unique(DedupJob *job, const char *qualname, Oid idx)
{
	Oid			con;

	if (!OidIsValid(idx))
		return;					/* nothing to undo */
	con = get_index_constraint(idx);
	/* a background job may have stopped before the index became a constraint */
	if (job->unique_is_constraint && OidIsValid(con))
		spi_exec_count(psprintf("ALTER TABLE %s DROP CONSTRAINT %s", qualname,
								quote_identifier(get_constraint_name(con))), SPI_OK_UTILITY);
	else
		spi_exec_count(psprintf("DROP INDEX %s",
								quote_qualified_identifier(get_namespace_name(get_rel_namespace(idx)),
														   get_rel_name(idx))),
					   SPI_OK_UTILITY);
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
 * ANALYZE an archive: never analyzed, the planner would take a million rows
 * for a few.  It runs as the archive's owner, the extension's; columns of
 * types users made have no statistics to gather (archive_skip_user_types),
 * and an archive not as the job left it was refused before
 * (archive_require_intact).
 */
static void
archive_analyze(const char *archive)
{
	spi_exec_as_owner(psprintf("ANALYZE %s", archive), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
}

/*
 * Would putting back the rows the job removed (those of archive, with
 * action 'delete') violate a unique index of the table other than the job's
 * own (job_index, which the rollback drops first)?  Rows written since may hold a removed row's primary key, or, with
 * the job's index gone, the user's own unique index may keep the key unique.
 * Refused before anything changes, rather than fail half-way with the
 * violation.  Each index is compared as it compares: its columns or
 * expressions, its operator family's equality under its collations, its
 * NULLs and its predicate.  An index over a column the archive does not have
 * (added since the job) is left to the INSERT.
 */
static void
refuse_taken_keys(DedupJob *job, DedupTarget *t, const char *archive, Oid job_index, bool job_index_gone)
{
	Oid			archiveid = dedup_relid_by_name(archive);
	Relation	rel = relation_open(t->relid, AccessShareLock);
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;

	archive_analyze(archive);

	relation_close(rel, AccessShareLock);
	foreach(lc, indexes)
	{
		Oid			ioid = lfirst_oid(lc);
		Relation	idx;
		Form_pg_index ix;
		Bitmapset  *attrs = NULL;
		bool		usable = true;
		bool		primary;
		bool		nulls_equal = false;
		char	   *pred = NULL;
		char	   *in_pred;
		char	   *removed;
		StringInfoData keys,
					taken,
					again,
					notnull;
		int			k;
		int64		ntaken,
					nagain;
		char	   *iname;
		bool		isnull;
		Datum		d;

		if (ioid == job_index)
			continue;
		idx = index_open(ioid, AccessShareLock);
		ix = idx->rd_index;
		if (!ix->indisunique || !ix->indislive || !ix->indisready)
		{
			index_close(idx, AccessShareLock);
			continue;
		}
		for (k = 0; k < ix->indnkeyatts; k++)
			if (ix->indkey.values[k] != 0)
				attrs = bms_add_member(attrs, ix->indkey.values[k] - FirstLowInvalidHeapAttributeNumber);
		pull_varattnos((Node *) RelationGetIndexExpressions(idx), 1, &attrs);
		pull_varattnos((Node *) RelationGetIndexPredicate(idx), 1, &attrs);
		k = -1;
		while ((k = bms_next_member(attrs, k)) >= 0)
		{
			AttrNumber	att = k + FirstLowInvalidHeapAttributeNumber;

			if (att <= 0 || get_attnum(archiveid, get_attname(t->relid, att, false)) == InvalidAttrNumber)
				usable = false;
		}
#ifdef DEDUP_HAVE_NULLS_NOT_DISTINCT
		nulls_equal = ix->indnullsnotdistinct;
#endif
		primary = ix->indisprimary;
		d = SysCacheGetAttr(INDEXRELID, idx->rd_indextuple, Anum_pg_index_indpred, &isnull);
		if (!isnull)
			pred = TextDatumGetCString(DirectFunctionCall2(pg_get_expr, d, ObjectIdGetDatum(t->relid)));

		initStringInfo(&keys);
		initStringInfo(&taken);
		initStringInfo(&again);
		initStringInfo(&notnull);
		appendStringInfoString(&notnull, "true");
		for (k = 0; k < ix->indnkeyatts && usable; k++)
		{
			Oid			eq = get_opfamily_member(idx->rd_opfamily[k], idx->rd_opcintype[k],
												 idx->rd_opcintype[k], BTEqualStrategyNumber);
			Oid			coll = idx->rd_indcollation[k];
			char	   *expr = TextDatumGetCString(DirectFunctionCall3(pg_get_indexdef_ext,
																	   ObjectIdGetDatum(ioid),
																	   Int32GetDatum(k + 1),
																	   BoolGetDatum(true)));
			char	   *collate = OidIsValid(coll) ? psprintf(" COLLATE %s", generate_collation_name(coll)) : "";
			Oid			ktype;

			if (!OidIsValid(eq))
			{
				usable = false;
				break;
			}
			appendStringInfo(&keys, ", (%s)%s AS dedup_k%d", expr, collate, k);
			/* as the index has it, so that the index finds the row */
			/* a composite key's NULL is the whole value's (sql_null_test) */
			ktype = TupleDescAttr(RelationGetDescr(idx), k)->atttypid;
			appendStringInfo(&taken, " AND ((%s)%s %s a.dedup_k%d%s)", expr, collate, sql_operator(eq), k,
							 nulls_equal ? psprintf(" OR ((%s)%s AND a.dedup_k%d%s)", expr,
													sql_null_test(ktype, true), k,
													sql_null_test(ktype, true)) : "");
			appendStringInfo(&again, "%sa.dedup_k%d", k > 0 ? ", " : "", k);
			if (!nulls_equal)
				appendStringInfo(&notnull, " AND a.dedup_k%d%s", k, sql_null_test(ktype, false));
		}
		iname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(idx)),
										   RelationGetRelationName(idx));
		index_close(idx, AccessShareLock);
		if (!usable)
			continue;

		/*
		 * a: the removed rows as the index sees them; taken: a row of the
		 * table has the same key (one index probe each); again: removed rows
		 * share a key (a key removed, written again and removed again)
		 */
		in_pred = pred ? psprintf(" AND (%s)", pred) : "";
		removed = psprintf("(SELECT true%s FROM %s WHERE dedup_action OPERATOR(pg_catalog.=) 'delete'%s) a"
						   " WHERE %s", keys.data, archive, in_pred, notnull.data);
		/* the table under an alias: a table named "a" would hide a.dedup_k<n> */
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s AND EXISTS (SELECT FROM ONLY %s dedup_t WHERE true%s%s)",
								removed, t->qualname, in_pred, taken.data),
					   SPI_OK_SELECT);
		ntaken = spi_get_int64(0, 1);
		spi_exec_count(psprintf("SELECT COALESCE(pg_catalog.sum(g.n OPERATOR(pg_catalog.-) 1), 0)::pg_catalog.int8"
								" FROM (SELECT pg_catalog.count(*) AS n FROM %s GROUP BY %s"
								" HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1) g",
								removed, again.data),
					   SPI_OK_SELECT);
		nagain = spi_get_int64(0, 1);

		if (ntaken > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: the keys of %lld rows it removed from %s are taken now",
							(long long) job->job_id, (long long) ntaken, t->qualname),
					 primary ?
					 errdetail("Rows written since the job have their primary key (index %s); putting them back would violate it.",
							   iname) :
					 job_index_gone ?
					 errdetail("Rows of the table have the same values in the columns of unique index %s, which is not the index the job built (that one was dropped since); putting them back would violate it.",
							   iname) :
					 errdetail("Rows of the table have the same values in the columns of unique index %s; putting them back would violate it.",
							   iname),
					 errhint("Compare %s with archive table %s, which holds the removed rows; change or remove the rows in the way, or keep the job's work.",
							 t->qualname, archive)));
		if (nagain > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: %lld rows it removed from %s have the key of another row it removed",
							(long long) job->job_id, (long long) nagain, t->qualname),
					 primary ?
					 errdetail("Putting them all back would violate the primary key (index %s).", iname) :
					 errdetail("Putting them all back would violate unique index %s.", iname),
					 errhint("Archive table %s holds the removed rows; restore the ones to keep by hand.",
							 archive)));
	}
	list_free(indexes);
}

/* "c.a = a.a, c.b = a.b"-style lists over unquoted names */
static char *
name_list(Datum *names, int n, const char *fmt, const char *sep)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		const char *q = quote_identifier(TextDatumGetCString(names[i]));

		if (i > 0)
			appendStringInfoString(&buf, sep);
		appendStringInfo(&buf, fmt, q, q);
	}
	return buf.data;
}

/*
 * A rule on a table the rollback writes would do something else instead of
 * (or as well as) putting the rows back; PostgreSQL also refuses one for the
 * data-modifying WITH that restore_all runs.  events: the pg_rewrite.ev_type
 * of the statements the rollback runs on the table ('3' INSERT, '2' UPDATE,
 * '4' DELETE).
 */
static void
refuse_rules(DedupJob *job, Oid relid, const char *qualname, const char *events)
{
	for (const char *e = events; *e; e++)
	{
		char	   *rule = enabled_rule(relid, *e);

		if (rule)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot roll back job %lld: rule %s rewrites the %s of %s",
							(long long) job->job_id, rule,
							*e == '3' ? "INSERT" : *e == '2' ? "UPDATE" : "DELETE", qualname),
					 errdetail("The rollback writes the rows the job changed back into the table; a rule would rewrite those statements (PostgreSQL refuses one in the data-modifying WITH the rollback uses), and what it did instead or as well no archive would undo."),
					 errhint("Drop or disable the rule for the rollback (ALTER TABLE ... DISABLE RULE).")));
	}
}

/*
 * Run dml, a statement that puts rows back (INSERT, UPDATE or DELETE, with
 * no RETURNING), and check that it wrote as many rows as the query expected
 * counts (in the same statement: the same snapshot), and, with check (a
 * condition on a written row), that each holds what the rollback wrote.  A
 * BEFORE trigger that returns NULL skips a row silently, one that returns
 * OLD (or sets the value back) makes an UPDATE change nothing, and the
 * archive, which the rollback drops, would have been those rows' last copy:
 * refused as the job refuses a trigger that spares its losers.  Returns the
 * rows written.
 */
static int64
restore_all(DedupJob *job, const char *dml, const char *check, const char *expected,
			const char *qualname)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	int64		written,
				wanted;

	PG_TRY();
	{
		spi_exec_count(psprintf("WITH dedup_r AS (%s RETURNING %s AS dedup_ok)"
								" SELECT (SELECT pg_catalog.count(*) FROM dedup_r r WHERE r.dedup_ok), (%s)",
								dml, check ? check : "true", expected),
					   SPI_OK_SELECT);
	}
	PG_CATCH();
	{
		/* a constraint added since, or one NOT VALID that the rows broke before */
		spi_rethrow_with_hint(oldcxt, ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION, 0,
							  psprintf("Putting back what job %lld changed in %s would violate the constraint above (added since the job, or NOT VALID and violated before it); change the rows in the way, or restore them from the job's archive by hand.",
									   (long long) job->job_id, qualname),
							  true);
	}
	PG_END_TRY();
	written = spi_get_int64(0, 1);
	wanted = spi_get_int64(0, 2);
	if (written != wanted)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("cannot roll back job %lld: %lld of the %lld rows it must write to %s were skipped or not written as archived",
						(long long) job->job_id, (long long) (wanted - written), (long long) wanted, qualname),
				 errdetail("A BEFORE trigger on the table skipped them, or changed what the rollback wrote; the archive, which the rollback drops, is their only copy."),
				 errhint("Disable the trigger for the rollback (ALTER TABLE ... DISABLE TRIGGER), or make it let the rows through.")));
	return written;
}

/* OPERATOR(schema.=), the default equality of a foreign key column's type */
static char *
type_equality(Oid type)
{
	TypeCacheEntry *tce = lookup_type_cache(type, TYPECACHE_EQ_OPR);

	if (!OidIsValid(tce->eq_opr))
		elog(ERROR, "dedup_ext: type %s has no equality operator", format_type_be(type));
	return sql_operator(tce->eq_opr);
}

/*
 * "c.a = (n.dedup_survivor ->> 0)::type AND ...": does row c still point
 * where the job left it?  dedup_survivor holds the values as jsonb; each is
 * read back as its column's type and compared with the type's equality, so
 * that settings that change a value's text (TimeZone, IntervalStyle...)
 * between the job and its rollback change nothing.
 */
static char *
points_where_left(Oid childid, Datum *cols, int ncols, const char *n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < ncols; i++)
	{
		char	   *name = TextDatumGetCString(cols[i]);
		Oid			type = get_atttype(childid, get_attnum(childid, name));

		appendStringInfo(&buf, "%sc.%s %s (%s.dedup_survivor OPERATOR(pg_catalog.->>) %d)::%s",
						 i > 0 ? " AND " : "", quote_identifier(name), type_equality(type), n, i,
						 sql_type(type));
	}
	return buf.data;
}

/*
 * "ROW(c.x, ...)::text IS NOT DISTINCT FROM ROW(a.x, ...)::text": the row of
 * referencing table c at the ctid the job left it at is still the one it
 * re-pointed (archived as a), not a newer one put there since (a VACUUM FULL
 * after a delete).  Compared over the columns of c's unique indexes but the
 * re-pointed ones, which tell rows apart and which triggers (updated_at)
 * leave alone; without such columns, over all the columns a has but the
 * re-pointed and generated ones.  As text: any type can be compared.
 */
static char *
same_other_columns(Oid archiveid, Oid childid, Datum *cols, int ncols)
{
	Relation	arel = relation_open(archiveid, AccessShareLock);
	Relation	crel = relation_open(childid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(arel);
	Bitmapset  *unique_cols = NULL;
	StringInfoData c,
				a;
	ListCell   *lc;

	foreach(lc, RelationGetIndexList(crel))
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index ix;

		if (!HeapTupleIsValid(tup))
			continue;
		ix = (Form_pg_index) GETSTRUCT(tup);
		for (int k = 0; ix->indisunique && k < ix->indnkeyatts; k++)
			if (ix->indkey.values[k] > 0)
				unique_cols = bms_add_member(unique_cols, ix->indkey.values[k]);
		ReleaseSysCache(tup);
	}
	relation_close(crel, AccessShareLock);

	initStringInfo(&c);
	initStringInfo(&a);
	for (int pass = 0; pass < 2 && c.len == 0; pass++)
		for (int i = 0; i < archive_table_natts(desc); i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			const char *name = NameStr(att->attname);
			AttrNumber	catt = get_attnum(childid, name);
			bool		repointed = false;

			for (int k = 0; k < ncols; k++)
				repointed = repointed || strcmp(TextDatumGetCString(cols[k]), name) == 0;
			if (att->attisdropped || repointed || catt == InvalidAttrNumber ||
				get_attgenerated(childid, catt) ||
				(pass == 0 && !bms_is_member(catt, unique_cols)))
				continue;
			appendStringInfo(&c, "%sc.%s", c.len > 0 ? ", " : "", quote_identifier(name));
			appendStringInfo(&a, "%sa.%s", a.len > 0 ? ", " : "", quote_identifier(name));
		}
	relation_close(arel, AccessShareLock);
	if (c.len == 0)
		return "true";
	return psprintf("ROW(%s)::pg_catalog.text IS NOT DISTINCT FROM ROW(%s)::pg_catalog.text",
					c.data, a.data);
}

/*
 * Rows of table relid that the job changed and that are gone from it now are
 * skipped by its rollback, as deleted since.  A later job that removed one
 * (a merge's collision, a dedup's loser, a backfill's deleted orphan) keeps
 * it in its archive, with this
 * job's value, and would put it back so when rolled back: rollbacks of jobs
 * that changed the same rows go newest first.  source: the job's archived
 * rows, alias a; gone: true for a row of source that the table no longer
 * has; same(x): x is a's row, for archive alias x.
 */
static void
refuse_removed_by_later(DedupJob *job, Oid relid, const char *qualname, const char *source,
						const char *gone, const char *same)
{
	Oid			types[2] = {INT8OID, OIDOID};
	Datum		values[2] = {Int64GetDatum(job->job_id), ObjectIdGetDatum(relid)};
	SPITupleTable *later;

	spi_exec_as_owner(psprintf("SELECT j.job_id, a.archive, a.writer FROM %s.dedup_job j,"
							   " LATERAL (SELECT j.archive_table::pg_catalog.text, NULL::pg_catalog.oid"
							   "  WHERE j.relation OPERATOR(pg_catalog.=) $2"
							   "  UNION ALL SELECT j.undo OPERATOR(pg_catalog.->>) 'deleted', NULL"
							   "  WHERE j.relation OPERATOR(pg_catalog.=) $2"
							   "  UNION ALL SELECT e OPERATOR(pg_catalog.->>) 'archive', j.submitted_by"
							   "  FROM pg_catalog.jsonb_array_elements(COALESCE(j.ref_archives, '[]')) e"
							   "  WHERE (e OPERATOR(pg_catalog.->>) 'oid')::pg_catalog.oid OPERATOR(pg_catalog.=) $2) a(archive, writer)"
							   " WHERE j.job_id OPERATOR(pg_catalog.>) $1 AND j.rolled_back_by IS NULL"
							   " AND a.archive IS NOT NULL ORDER BY j.job_id DESC",
							   dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_SELECT);
	later = SPI_tuptable;
	for (uint64 i = 0; i < later->numvals; i++)
	{
		char	   *archive = SPI_getvalue(later->vals[i], later->tupdesc, 2);
		Oid			archiveid = dedup_relid_by_name(archive);
		bool		isnull;
		Datum		writer = SPI_getbinval(later->vals[i], later->tupdesc, 3, &isnull);

		if (!OidIsValid(archiveid) || get_attnum(archiveid, "dedup_action") == InvalidAttrNumber)
			continue;
		/* read as any archive a rollback reads (and readable by the owner) */

		archive_require_intact(archive, strtoll(SPI_getvalue(later->vals[i], later->tupdesc, 1), NULL, 10),
							   relid, isnull ? InvalidOid : DatumGetObjectId(writer));
		/*
		 * As the table's owner, as VACUUM reads a table: it may read every
		 * archive of it (archive_grant), the later job's may be another
		 * role's, and the key's operators run with its rights, not more.
		 */
		spi_exec_as(get_rel_owner(relid),
					psprintf("SELECT pg_catalog.count(*) FROM %s WHERE %s AND EXISTS (SELECT FROM %s x"
							 " WHERE x.dedup_action OPERATOR(pg_catalog.=) 'delete' AND %s)",
							 source, gone, archive, same),
					0, NULL, NULL, NULL, SPI_OK_SELECT);
		if (spi_get_int64(0, 1) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: job %s removed %lld rows of %s that it changed",
							(long long) job->job_id, SPI_getvalue(later->vals[i], later->tupdesc, 1),
							(long long) spi_get_int64(0, 1), qualname),
					 errdetail("Their rollback would leave them out, and job %s's would put them back with the values this job gave them.",
							   SPI_getvalue(later->vals[i], later->tupdesc, 1)),
					 errhint("Roll back job %s first (or, if it is to stay, give up its rollback with dedup_drop_archive(%s)).",
							 SPI_getvalue(later->vals[i], later->tupdesc, 1),
							 SPI_getvalue(later->vals[i], later->tupdesc, 1))));
	}
}

/* Put back the rows of a referencing table that a merge removed as collisions. */
static int64
restore_removed_refs(DedupJob *job, const char *archive, Oid archiveid, const char *child, Oid childid)
{
	char	   *restorable;

	/* only when there is something to put back: it needs INSERT on the table */
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM %s a"
							" WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'", archive),
				   SPI_OK_SELECT);
	if (spi_get_int64(0, 1) == 0)
		return 0;
	restorable = restorable_columns(archiveid, childid, job->job_id);
	return restore_all(job, psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s a"
									 " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'",
									 child, restorable, restorable, archive),
					   NULL,
					   psprintf("SELECT pg_catalog.count(*) FROM %s a"
								" WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'", archive),
					   child);
}

/*
 * Set the re-pointed columns of a referencing table back.  A row that two
 * passes of a background merge re-pointed (its survivor lost in the second)
 * has two entries: the one written first (archive_write_order) holds its
 * value before the job.
 *
 * Found by primary key, a row is set back while it points where the job
 * left it.  One that needs nothing is skipped: deleted since, its original
 * value back, or its foreign key NULL again (a NULL column: it references
 * nothing).  One that points elsewhere since was changed by someone else,
 * and the rollback is refused rather than overwrite it.  Found by ctid (no
 * primary key, or one that contains the re-pointed columns), every row
 * listed must be found.
 */
static int64
restore_repointed(DedupJob *job, const char *archive, const char *child, Oid childid,
				  Datum *cols, int ncols, Datum *pk, int npk)
{
	char	   *source;
	char	   *match;
	int64		moved,
				expected;
	/* what a written row must hold: its archived values */
	StringInfoData written_back;

	/* none re-pointed (only collisions removed): no UPDATE runs */
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM %s a"
							" WHERE a.dedup_action OPERATOR(pg_catalog.=) 'repoint' LIMIT 1) r", archive),
				   SPI_OK_SELECT);
	if (spi_get_int64(0, 1) == 0)
		return 0;
	initStringInfo(&written_back);
	for (int i = 0; i < ncols; i++)
	{
		char	   *name = TextDatumGetCString(cols[i]);
		const char *q = quote_identifier(name);

		appendStringInfo(&written_back, "%s(c.%s %s a.%s OR (c.%s IS NULL AND a.%s IS NULL))",
						 i > 0 ? " AND " : "", q,
						 type_equality(get_atttype(childid, get_attnum(childid, name))), q, q, q);
	}

	if (npk > 0)
	{
		char	   *pkmatch = psprintf("ROW(%s) OPERATOR(pg_catalog.=) ROW(%s)",
									   name_list(pk, npk, "c.%s%.0s", ", "),
									   name_list(pk, npk, "a.%s%.0s", ", "));
		char	   *job_value;
		char	   *where;
		StringInfoData original,
					some_null;
		int64		changed;

		source = psprintf("(SELECT DISTINCT ON (%s) a.* FROM %s a"
						  " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'repoint' ORDER BY %s, %s)",
						  name_list(pk, npk, "a.%s%.0s", ", "), archive,
						  name_list(pk, npk, "a.%s%.0s", ", "), archive_write_order(archive));
		/*
		 * Where the job (one of its re-points, in a background merge) left
		 * the row.  (Archives written before dedup_survivor was kept have
		 * NULL there: every row found is taken as the job left it.)
		 */
		job_value = psprintf("EXISTS (SELECT FROM %s n"
							 " WHERE n.dedup_action OPERATOR(pg_catalog.=) 'repoint' AND ROW(%s) OPERATOR(pg_catalog.=) ROW(%s)"
							 " AND (n.dedup_survivor IS NULL OR (%s)))",
							 archive, name_list(pk, npk, "c.%s%.0s", ", "), name_list(pk, npk, "n.%s%.0s", ", "),
							 points_where_left(childid, cols, ncols, "n"));
		initStringInfo(&original);
		initStringInfo(&some_null);
		for (int i = 0; i < ncols; i++)
		{
			char	   *name = TextDatumGetCString(cols[i]);
			const char *q = quote_identifier(name);

			appendStringInfo(&original, "%sc.%s %s a.%s", i > 0 ? " AND " : "", q,
							 type_equality(get_atttype(childid, get_attnum(childid, name))), q);
			appendStringInfo(&some_null, "%sc.%s IS NULL", i > 0 ? " OR " : "", q);
		}
		refuse_removed_by_later(job, childid, child, psprintf("%s a", source),
								psprintf("NOT EXISTS (SELECT FROM ONLY %s c WHERE %s)", child, pkmatch),
								psprintf("ROW(%s) OPERATOR(pg_catalog.=) ROW(%s)",
										 name_list(pk, npk, "x.%s%.0s", ", "),
										 name_list(pk, npk, "a.%s%.0s", ", ")));
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c, %s a WHERE %s"
								" AND NOT (%s) AND NOT (%s) AND NOT %s",
								child, source, pkmatch, some_null.data, original.data, job_value),
					   SPI_OK_SELECT);
		changed = spi_get_int64(0, 1);
		if (changed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: %lld re-pointed rows of %s point elsewhere since",
							(long long) job->job_id, (long long) changed, child),
					 errdetail("Their foreign key has a value the job did not give it; a rollback would overwrite it."),
					 errhint("Compare %s with archive table %s (dedup_survivor: where the job pointed each row), and point those rows back or keep the job's work.",
							 child, archive)));
		where = psprintf("%s AND NOT (%s) AND NOT (%s) AND %s",
						 pkmatch, some_null.data, original.data, job_value);
		return restore_all(job, psprintf("UPDATE ONLY %s c SET %s FROM %s a WHERE %s",
										 child, name_list(cols, ncols, "%s = a.%s", ", "), source, where),
						   written_back.data,
						   psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c, %s a WHERE %s",
									child, source, where),
						   child);
	}

	source = psprintf("(SELECT a.* FROM %s a WHERE a.dedup_action OPERATOR(pg_catalog.=) 'repoint')",
					  archive);
	match = psprintf("c.ctid OPERATOR(pg_catalog.=) a.dedup_new_value::pg_catalog.tid AND %s"
					 " AND (a.dedup_survivor IS NULL OR (%s))",
					 same_other_columns(dedup_relid_by_name(archive), childid, cols, ncols),
					 points_where_left(childid, cols, ncols, "a"));
	spi_exec_count(psprintf("SELECT (SELECT pg_catalog.count(*) FROM ONLY %s c, %s a WHERE %s),"
							" (SELECT pg_catalog.count(*) FROM %s a)", child, source, match, source),
				   SPI_OK_SELECT);
	moved = spi_get_int64(0, 1);
	expected = spi_get_int64(0, 2);
	if (moved != expected)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: %lld of %lld re-pointed rows of %s were found",
						(long long) job->job_id, (long long) moved, (long long) expected, child),
				 errdetail("Rows of a table without a primary key (or when it contains the re-pointed columns) are found by their ctid, which an UPDATE, VACUUM FULL or CLUSTER since the job changes; a row found there must be the one the job re-pointed, still pointing where it left it."),
				 errhint("Compare %s with archive table %s (dedup_survivor: where the job pointed each row).",
						 child, archive)));
	return restore_all(job, psprintf("UPDATE ONLY %s c SET %s FROM %s a WHERE %s",
									 child, name_list(cols, ncols, "%s = a.%s", ", "), source, match),
					   written_back.data, psprintf("SELECT %lld", (long long) expected), child);
}

/*
 * Undo what a merge did to the referencing tables: put back the rows removed
 * as collisions and set re-pointed foreign keys back.  Runs after the
 * table's own rows are back, so the restored references find their rows.
 */
static int64
restore_refs(DedupJob *job)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(job->ref_archives)};
	SPITupleTable *refs;
	uint64		nrefs;
	int64		restored = 0;

	if (SPI_execute_with_args("SELECT (e OPERATOR(pg_catalog.->>) 'oid')::pg_catalog.oid, e OPERATOR(pg_catalog.->>) 'archive',"
							  " ARRAY(SELECT pg_catalog.jsonb_array_elements_text(e OPERATOR(pg_catalog.->) 'columns')),"
							  " ARRAY(SELECT pg_catalog.jsonb_array_elements_text(e OPERATOR(pg_catalog.->) 'pk'))"
							  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) e",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read the archives of job %lld", (long long) job->job_id);
	refs = SPI_tuptable;
	nrefs = SPI_processed;

	/*
	 * First every removed row goes back, from every archive, then the
	 * re-points are undone, newest archive first: a row re-pointed for one
	 * foreign key may have been removed for another one, before or after
	 * (the batches of a background merge interleave the foreign keys).
	 */
	for (int step = 0; step < 2; step++)
		for (uint64 i = nrefs; i-- > 0;)
		{
			HeapTuple	tup = refs->vals[i];
			bool		isnull;
			Oid			childid = DatumGetObjectId(SPI_getbinval(tup, refs->tupdesc, 1, &isnull));
			char	   *archive = SPI_getvalue(tup, refs->tupdesc, 2);
			char	   *child;
			Datum	   *cols,
					   *pk;
			int			ncols,
						npk;
			Oid			archiveid = dedup_relid_by_name(archive);

			/* by OID: a table renamed since the job is still the right one */
			if (get_rel_name(childid) == NULL || !OidIsValid(archiveid))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot roll back job %lld: a re-pointed table or its archive %s no longer exists",
								(long long) job->job_id, archive)));
			archive_require_intact(archive, job->job_id, childid, job->submitted_by);
			child = quote_qualified_identifier(get_namespace_name(get_rel_namespace(childid)),
											   get_rel_name(childid));
			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, refs->tupdesc, 3, &isnull)),
							  TEXTOID, -1, false, TYPALIGN_INT, &cols, NULL, &ncols);
			deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, refs->tupdesc, 4, &isnull)),
							  TEXTOID, -1, false, TYPALIGN_INT, &pk, NULL, &npk);
			if (step == 0)
			{
				/* the statements that will run: removed rows go back, re-points are undone */
				spi_exec_count(psprintf("SELECT (SELECT pg_catalog.count(*) FROM (SELECT FROM %s a"
										"  WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete' LIMIT 1) d),"
										" (SELECT pg_catalog.count(*) FROM (SELECT FROM %s a"
										"  WHERE a.dedup_action OPERATOR(pg_catalog.=) 'repoint' LIMIT 1) r)",
										archive, archive),
							   SPI_OK_SELECT);
				refuse_rules(job, childid, child,
							 psprintf("%s%s", spi_get_int64(0, 1) ? "3" : "", spi_get_int64(0, 2) ? "2" : ""));
				restored += restore_removed_refs(job, archive, archiveid, child, childid);
			}
			else
			{
				restored += restore_repointed(job, archive, child, childid, cols, ncols, pk, npk);
				spi_exec_as_owner(psprintf("DROP TABLE %s", archive), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
			}
		}
	return restored;
}

/*
 * ROW(c.a, c.b) = ROW(x.a, x.b) over the columns of a key archive, but for
 * column except (NULL: none), such as a linked archive's foreign key value
 */
char *
key_archive_match(Oid archive, const char *c, const char *x, const char *except)
{
	Relation	arel = relation_open(archive, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(arel);
	StringInfoData lhs;
	StringInfoData rhs;

	initStringInfo(&lhs);
	initStringInfo(&rhs);
	for (int i = 0; i < desc->natts; i++)
	{
		const char *name = NameStr(TupleDescAttr(desc, i)->attname);

		if (strcmp(name, "dedup_ctid") == 0)
		{
			relation_close(arel, AccessShareLock);
			return psprintf("%s.ctid OPERATOR(pg_catalog.=) %s.dedup_ctid", c, x);
		}
		if (except && strcmp(name, except) == 0)
			continue;
		appendStringInfo(&lhs, "%s%s.%s", lhs.len > 0 ? ", " : "", c, quote_identifier(name));
		appendStringInfo(&rhs, "%s%s.%s", rhs.len > 0 ? ", " : "", x, quote_identifier(name));
	}
	relation_close(arel, AccessShareLock);
	return psprintf("ROW(%s) OPERATOR(pg_catalog.=) ROW(%s)", lhs.data, rhs.data);
}

/*
 * Set back to NULL the foreign key of the rows a backfill linked, found by
 * primary key, while it has the value the job gave it.  A row deleted since,
 * or already NULL again, needs nothing; one linked elsewhere since was
 * changed by someone else, and the rollback is refused rather than clear it.
 */
static int64
unlink_rows(DedupJob *job, DedupTarget *t, const char *linked, const char *fk, const char *fkname)
{
	char	   *job_value;
	int64		changed;

	job_value = psprintf("EXISTS (SELECT FROM %s l WHERE %s AND c.%s %s l.%s)",
						 linked, sql_pk_match(t, "c", "l"), fk,
						 type_equality(get_atttype(t->relid, get_attnum(t->relid, fkname))), fk);
	refuse_removed_by_later(job, t->relid, t->qualname, psprintf("%s a", linked),
							psprintf("NOT EXISTS (SELECT FROM ONLY %s c WHERE %s)", t->qualname,
									 sql_pk_match(t, "c", "a")),
							sql_pk_match(t, "x", "a"));
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c WHERE c.%s IS NOT NULL"
							" AND EXISTS (SELECT FROM %s l WHERE %s) AND NOT %s",
							t->qualname, fk, linked, sql_pk_match(t, "c", "l"), job_value),
				   SPI_OK_SELECT);
	changed = spi_get_int64(0, 1);
	if (changed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: %lld rows of %s that it linked are linked elsewhere since",
						(long long) job->job_id, (long long) changed, t->qualname),
				 errdetail("Their %s has a value the job did not give it; a rollback would clear it.", fk),
				 errhint("Compare %s with archive table %s, which lists the rows the job linked and their values.",
						 t->qualname, linked)));
	return restore_all(job, psprintf("UPDATE ONLY %s c SET %s = NULL WHERE %s", t->qualname, fk, job_value),
					   psprintf("c.%s IS NULL", fk),
					   psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c WHERE %s", t->qualname, job_value),
					   t->qualname);
}

/*
 * Remove the parents a backfill created, once its links are undone: only
 * while each is as the job created it and nothing references it.  A parent
 * changed since, or that a row references now (through a foreign key, or
 * through the job's fk_column, whose constraint the rollback has dropped),
 * was taken into use: the rollback is refused rather than delete it (or let
 * a cascade delete what references it).  An archive written before it kept
 * the whole row has the parent's key column alone: changes are not seen.
 */
static void
remove_created_parents(DedupJob *job, DedupTarget *t, const char *fk, Oid parentid,
					   const char *parent, const char *created)
{
	Oid			createdid = dedup_relid_by_name(created);
	const char *pcolname = json_field_text(job->undo, "parent_column");
	char	   *pcol = pstrdup(quote_identifier(pcolname));
	Oid			fktype = get_atttype(t->relid, get_attnum(t->relid, json_field_text(job->undo, "fk_column")));
	char	   *match;
	ReferencedRow found;

	if (get_attnum(createdid, "dedup_job_id") != InvalidAttrNumber)
	{
		Relation	arel = relation_open(createdid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(arel);
		StringInfoData now,
					then;

		initStringInfo(&now);
		initStringInfo(&then);
		for (int i = 0; i < archive_table_natts(desc); i++)
		{
			const char *name = quote_identifier(NameStr(TupleDescAttr(desc, i)->attname));

			if (TupleDescAttr(desc, i)->attisdropped)
				continue;
			appendStringInfo(&then, "%sa.%s", now.len > 0 ? ", " : "", name);
			appendStringInfo(&now, "%sc.%s", now.len > 0 ? ", " : "", name);
		}
		relation_close(arel, AccessShareLock);
		match = psprintf("c.%s %s a.%s", pcol, type_equality(get_atttype(parentid, get_attnum(parentid, pcolname))),
						 pcol);
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c, %s a WHERE %s"
								" AND ROW(%s)::pg_catalog.text IS DISTINCT FROM ROW(%s)::pg_catalog.text",
								parent, created, match, now.data, then.data),
					   SPI_OK_SELECT);
		if (spi_get_int64(0, 1) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: %lld parents it created in %s were changed since",
							(long long) job->job_id, (long long) spi_get_int64(0, 1), parent),
					 errdetail("A rollback removes the parents the job created; what was written to them would be lost."),
					 errhint("Compare %s with archive table %s, which holds them as created.", parent, created)));
	}
	else
		match = key_archive_match(createdid, "c", "a", NULL);

	if (referenced_row(parentid, parent, psprintf("EXISTS (SELECT FROM %s a WHERE %s)", created, match),
					   false, &found))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: a parent it created in %s is referenced since",
						(long long) job->job_id, parent),
				 errdetail("Key %s is referenced from table %s through foreign key %s.",
						   found.key, found.child, found.conname),
				 errhint("Point those rows elsewhere, or keep the job's work.")));
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c, %s a"
							" WHERE c.%s %s CAST(a.%s AS %s)",
							t->qualname, created, fk, type_equality(fktype), pcol,
							sql_type(fktype)),
				   SPI_OK_SELECT);
	if (spi_get_int64(0, 1) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: %lld rows of %s point at parents it created, linked since",
						(long long) job->job_id, (long long) spi_get_int64(0, 1), t->qualname),
				 errdetail("Their %s was set after the job; a rollback removes the parents it created.", fk),
				 errhint("Point those rows elsewhere, or keep the job's work.")));
	restore_all(job, psprintf("DELETE FROM ONLY %s c USING %s a WHERE %s", parent, created, match),
				NULL,
				psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c WHERE EXISTS (SELECT FROM %s a WHERE %s)",
						 parent, created, match),
				parent);
}

/* Does archive (NULL: none) hold removed rows ('delete'), to put back with an INSERT? */
static bool
archive_has_removed(const char *archive)
{
	if (archive == NULL)
		return false;
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM %s a"
							" WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete' LIMIT 1) d", archive),
				   SPI_OK_SELECT);
	return spi_get_int64(0, 1) > 0;
}

/*
 * Undo a backfill: drop the constraints it added, put deleted orphans back,
 * set what it linked back to NULL, and remove the parents it created.
 */
static int64
rollback_backfill(DedupJob *job, DedupTarget *t)
{
	char	   *deleted = json_field_text(job->undo, "deleted");
	char	   *linked = json_field_text(job->undo, "linked");
	char	   *created = json_field_text(job->undo, "created");
	char	   *constraint = json_field_text(job->undo, "constraint");
	char	   *fk = pstrdup(quote_identifier(json_field_text(job->undo, "fk_column")));
	Oid			parentid = (Oid) strtoul(json_field_text(job->undo, "parent_oid"), NULL, 10);
	char	   *parent;
	Oid			linkedid = dedup_relid_by_name(linked);
	int64		restored = 0;
	int64		expected;
	int64		nulled;
	char	   *fkname;

	if (!OidIsValid(linkedid) || (deleted && !OidIsValid(dedup_relid_by_name(deleted))) ||
		(created && !OidIsValid(dedup_relid_by_name(created))) || get_rel_name(parentid) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the parent table or an archive table of job %lld no longer exists",
						(long long) job->job_id)));
	archive_require_intact(linked, job->job_id, t->relid, InvalidOid);
	if (deleted)
		archive_require_intact(deleted, job->job_id, t->relid, InvalidOid);
	if (created)
		archive_require_intact(created, job->job_id, parentid, job->submitted_by);
	parent = quote_qualified_identifier(get_namespace_name(get_rel_namespace(parentid)),
										get_rel_name(parentid));
	if (created)
		refuse_rules(job, parentid, parent, "4");
	if (constraint)
		spi_exec_count(psprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", t->qualname,
								quote_identifier(constraint)), SPI_OK_UTILITY);
	if (strcmp(json_field_text(job->undo, "not_null"), "true") == 0)
		spi_exec_count(psprintf("ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL", t->qualname, fk),
					   SPI_OK_UTILITY);
	/*
	 * A NOT NULL added since (by a later backfill, or by hand) forbids
	 * setting linked rows back to NULL, and putting back the orphans.
	 */
	fkname = json_field_text(job->undo, "fk_column");
	if (get_attnum(t->relid, fkname) == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: column %s of %s was dropped or renamed since the job",
						(long long) job->job_id, fk, t->qualname),
				 errhint("Archive table %s lists the rows the job linked.", linked)));
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM %s LIMIT 1) l", linked), SPI_OK_SELECT);
	if ((spi_get_int64(0, 1) > 0 || deleted) && column_not_null(t->relid, get_attnum(t->relid, fkname)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: column %s of %s is NOT NULL now",
						(long long) job->job_id, fk, t->qualname),
				 errdetail("The rollback sets the rows the job linked back to NULL, and puts back orphans whose %s is NULL; the NOT NULL was added after the job.",
						   fk),
				 errhint("Roll back the job that added it first, or drop it with ALTER TABLE ... ALTER COLUMN ... DROP NOT NULL.")));
	if (deleted && archive_has_removed(deleted))
	{
		char	   *cols = restorable_columns(dedup_relid_by_name(deleted), t->relid, job->job_id);

		refuse_taken_keys(job, t, deleted, InvalidOid, false);

		restored += restore_all(job, psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s a",
											  t->qualname, cols, cols, deleted),
								NULL,
								psprintf("SELECT pg_catalog.count(*) FROM %s a", deleted), t->qualname);
	}

	if (t->npk > 0 && get_attnum(linkedid, fkname) != InvalidAttrNumber)
		nulled = unlink_rows(job, t, linked, fk, fkname);
	else
	{
		/*
		 * By ctid (no primary key), or an archive that did not keep the
		 * values: every row listed must be found, or the rollback is refused.
		 * A row a writer set back to NULL, linked again by a later batch, is
		 * listed twice.
		 */
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM (SELECT DISTINCT %s FROM %s l) l",
								t->npk == 0 ? "l.dedup_ctid" : sql_pk_list(t, "l"), linked),
					   SPI_OK_SELECT);
		expected = spi_get_int64(0, 1);
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c WHERE EXISTS (SELECT FROM %s l WHERE %s)",
								t->qualname, linked, key_archive_match(linkedid, "c", "l", NULL)),
					   SPI_OK_SELECT);
		nulled = spi_get_int64(0, 1);
		if (nulled != expected)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: %lld of %lld linked rows of %s were found",
							(long long) job->job_id, (long long) nulled, (long long) expected, t->qualname),
					 errdetail("Rows of a table without a primary key are found by their ctid, which an UPDATE, VACUUM FULL or CLUSTER since the job changes.")));
		nulled = restore_all(job, psprintf("UPDATE ONLY %s c SET %s = NULL FROM %s l WHERE %s",
										   t->qualname, fk, linked, key_archive_match(linkedid, "c", "l", NULL)),
							 psprintf("c.%s IS NULL", fk),
							 psprintf("SELECT %lld", (long long) expected), t->qualname);
	}
	restored += nulled;

	if (created)
		remove_created_parents(job, t, fk, parentid, parent, created);

	spi_exec_as_owner(psprintf("DROP TABLE %s", linked), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	if (deleted)
		spi_exec_as_owner(psprintf("DROP TABLE %s", deleted), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	if (created)
		spi_exec_as_owner(psprintf("DROP TABLE %s", created), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return restored;
}

/*
 * Give the renamed rows their key back: each row's value before the job's
 * first rename of it (a background job may rename a row again in a later
 * pass).  Only rows that still have a value the job gave them: a row changed
 * since keeps what was written, and the rollback is refused rather than
 * overwrite it.
 */
static int64
restore_renamed(DedupJob *job, DedupTarget *t, const char *col)
{
	char	   *pk = sql_pk_list(t, "a");
	char	   *originals;
	char	   *job_value;
	int64		changed;

	originals = psprintf("(SELECT DISTINCT ON (%s) a.* FROM %s a"
						 " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'rename' ORDER BY %s, %s)",
						 pk, job->archive_table, pk, archive_write_order(job->archive_table));
	/* compared as bytes: under a nondeterministic collation a change of case is a change */
	job_value = psprintf("EXISTS (SELECT FROM %s n WHERE n.dedup_action OPERATOR(pg_catalog.=) 'rename' AND %s"
						 " AND r.%s::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) n.dedup_new_value)",
						 job->archive_table, sql_pk_match(t, "r", "n"), col);

	refuse_removed_by_later(job, t->relid, t->qualname, psprintf("%s a", originals),
							psprintf("NOT EXISTS (SELECT FROM ONLY %s r WHERE %s)", t->qualname,
									 sql_pk_match(t, "r", "a")),
							sql_pk_match(t, "x", "a"));

	/*
	 * A row deleted since, or given its original value back, needs nothing;
	 * one that has a value the job did not give it was changed by someone
	 * else, and the rollback would overwrite that.
	 */
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s r, %s a WHERE %s"
							" AND r.%s::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.<>) a.%s::pg_catalog.text"
							" AND NOT %s",
							t->qualname, originals, sql_pk_match(t, "r", "a"), col, col, job_value),
				   SPI_OK_SELECT);
	changed = spi_get_int64(0, 1);
	if (changed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: %lld renamed rows of %s have a value the job did not give them",
						(long long) job->job_id, (long long) changed, t->qualname),
				 errdetail("They were changed since the job; a rollback would overwrite that."),
				 errhint("Compare the table with archive table %s (column dedup_new_value), and set those rows back to the job's values or restore them by hand.",
						 job->archive_table)));
	return restore_all(job, psprintf("UPDATE ONLY %s r SET %s = a.%s FROM %s a WHERE %s AND %s",
									 t->qualname, col, col, originals, sql_pk_match(t, "r", "a"), job_value),
					   psprintf("r.%s::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) a.%s::pg_catalog.text",
								col, col),
					   psprintf("SELECT pg_catalog.count(*) FROM ONLY %s r, %s a WHERE %s AND %s",
								t->qualname, originals, sql_pk_match(t, "r", "a"), job_value),
					   t->qualname);
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
	Oid			job_index = InvalidOid;
	bool		job_index_gone = false;
	bool		nothing;
	bool		archived;
	bool		removed;
	Oid			saved_user,
				acting_user;
	int			saved_sec,
				acting_sec;

	dedup_require_arg(fcinfo, 0, "job_id");
	job_id = PG_GETARG_INT64(0);
	PreventCommandIfReadOnly("dedup_rollback()");

	SPI_connect();
	job = job_fetch(job_id, true, true);
	if (strcmp(job->kind, "rollback") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("job %lld is a rollback; it cannot be rolled back itself", (long long) job_id),
				 errhint("Run the job it undid again instead.")));
	if (job->rolled_back_by != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld was already rolled back by job %lld",
						(long long) job_id, (long long) job->rolled_back_by)));
	/* a background job that stopped half-way has committed, archived batches */
	if (strcmp(job->state, "done") != 0 &&
		!(job->background && (strcmp(job->state, "cancelled") == 0 || strcmp(job->state, "failed") == 0)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld is %s; only a finished job can be rolled back",
						(long long) job_id, job_effective_state(job_id)),
				 strcmp(job->state, "done") != 0 && job->background ?
				 errhint("Cancel it first with dedup_cancel(%lld).", (long long) job_id) : 0));
	/* archive => true, and none left: a dedup that changed nothing dropped its empty archive */
	archived = job_param(job, "archive") == NULL || strcmp(job_param(job, "archive"), "false") != 0;
	nothing = job->archive_table == NULL && strcmp(job->kind, "dedup") == 0 &&
		job->rows_deleted == 0 && job->rows_renamed == 0 && archived;
	if (job->archive_table == NULL && !nothing &&
		(job->undo == NULL || json_field_text(job->undo, "linked") == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld kept no archive, so it cannot be rolled back", (long long) job_id),
				 !archived ?
				 errdetail("It ran with archive => false.") :
				 errdetail("Its archive was dropped with dedup_drop_archive.")));
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(job->relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the table of job %lld no longer exists", (long long) job_id)));
	archive = job->archive_table ? dedup_relid_by_name(job->archive_table) : InvalidOid;
	if (job->archive_table && !OidIsValid(archive))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("archive table %s of job %lld no longer exists",
						job->archive_table, (long long) job_id)));
	if (job->archive_table)
		archive_require_intact(job->archive_table, job_id, job->relid, InvalidOid);

	/*
	 * What an archive lists is put back only where the job's submitter may
	 * still write (a merge's writer may add rows to the archive of a table it
	 * does not own).
	 */
	job_act_as_submitter(job, &saved_user, &saved_sec);

	/* the owner check and lock; the key is only needed for the primary key */
	t = dedup_target_open(job->relid, job_param_array(job, "key"), NULL, true,
						  true, ShareRowExclusiveLock);
	/*
	 * its own table: the removed rows go back (INSERT, when there are any),
	 * renamed or linked ones are set back (UPDATE)
	 */
	removed = !nothing && archive_has_removed(strcmp(job->kind, "backfill") == 0 ?
											  json_field_text(job->undo, "deleted") : job->archive_table);
	if (!nothing)
		refuse_rules(job, t->relid, t->qualname,
					 psprintf("%s%s", removed ? "3" : "",
							  strcmp(job->kind, "backfill") == 0 || job_param(job, "rename_column") ? "2" : ""));
	if (strcmp(job->kind, "backfill") != 0)
		job_index = job_unique_index(job, t, &job_index_gone);
	if (strcmp(job->kind, "backfill") != 0 && !nothing)
		refuse_taken_keys(job, t, job->archive_table, job_index, job_index_gone);
	/* the rollback's own row names who asked for it */
	GetUserIdAndSecContext(&acting_user, &acting_sec);
	SetUserIdAndSecContext(saved_user, saved_sec);
	rb_job = job_create("rollback", "restoring", job->relid, t->relname,
						psprintf("{\"job_id\": %lld}", (long long) job_id), job_id);
	SetUserIdAndSecContext(acting_user, acting_sec);

	if (strcmp(job->kind, "backfill") == 0)
	{
		restored = rollback_backfill(job, t);
		job_finish(rb_job, NULL, 0, 0, 0, restored, NULL, NULL, false);
		job_mark_rolled_back(job_id, rb_job);
		job_act_as_caller(saved_user, saved_sec);
		SPI_finish();
		PG_RETURN_INT64(restored);
	}

	/* first the unique index, or the restored duplicates would violate it */
	drop_unique(job, t->qualname, job_index);
	if (nothing)
	{
		job_finish(rb_job, NULL, 0, 0, 0, 0, NULL, NULL, false);
		job_mark_rolled_back(job_id, rb_job);
		job_act_as_caller(saved_user, saved_sec);
		SPI_finish();
		PG_RETURN_INT64(0);
	}

	cols = removed ? restorable_columns(archive, job->relid, job->job_id) : NULL;
	if (removed)
		restored += restore_all(job, psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE"
										  " SELECT %s FROM %s a WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'",
										  t->qualname, cols, cols, job->archive_table),
							NULL,
							psprintf("SELECT pg_catalog.count(*) FROM %s a"
									 " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'", job->archive_table),
							t->qualname);

	if (job->ref_archives)
		restored += restore_refs(job);

	rename_column = job_param(job, "rename_column");
	if (rename_column)
		restored += restore_renamed(job, t, quote_identifier(rename_column));

	spi_exec_as_owner(psprintf("DROP TABLE %s", job->archive_table), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	job_finish(rb_job, NULL, 0, 0, 0, restored, NULL, NULL, false);
	job_mark_rolled_back(job_id, rb_job);
	job_act_as_caller(saved_user, saved_sec);
	SPI_finish();
	PG_RETURN_INT64(restored);
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
