/*
 * rollback.c
 *		dedup_rollback: a job's archived rows written back.
 *
 * A rollback puts back what its job removed or changed, from the job's
 * archives (archive.c), newest job first: it refuses before changing
 * anything when the rows cannot go back as they were (a key taken since,
 * a rule or a later job in the way), and checks, statement by statement,
 * that every row it wrote is there.
 */
#include "dedup_ext.h"

#include "access/genam.h"
#include "access/relation.h"
#include "catalog/dependency.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(dedup_rollback);
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
Oid
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
 * rows written.  source, if not NULL, is computed once for both, as
 * dedup_src.
 */
static int64
restore_all_from(DedupJob *job, const char *source, const char *dml, const char *check,
				 const char *expected, const char *qualname)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	int64		written,
				wanted;

	PG_TRY();
	{
		spi_exec_count(psprintf("WITH %s%s%sdedup_r AS (%s RETURNING %s AS dedup_ok)"
								" SELECT (SELECT pg_catalog.count(*) FROM dedup_r r WHERE r.dedup_ok), (%s)",
								source ? "dedup_src AS MATERIALIZED " : "", source ? source : "",
								source ? ", " : "", dml, check ? check : "true", expected),
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

static int64
restore_all(DedupJob *job, const char *dml, const char *check, const char *expected,
			const char *qualname)
{
	return restore_all_from(job, NULL, dml, check, expected, qualname);
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
points_where_left(Oid childid, Datum *cols, int ncols, const char *c, const char *n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < ncols; i++)
	{
		char	   *name = TextDatumGetCString(cols[i]);
		Oid			type = get_atttype(childid, get_attnum(childid, name));

		appendStringInfo(&buf, "%s%s.%s %s (%s.dedup_survivor OPERATOR(pg_catalog.->>) %d)::%s",
						 i > 0 ? " AND " : "", c, quote_identifier(name), type_equality(type), n, i,
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
 * has; same(x): x is a's row, for archive alias x.  The rows gone otherwise
 * are counted in a NOTICE: a row moved to another partition looks deleted,
 * and keeps there what the job gave it.
 */
static void
refuse_removed_by_later(DedupJob *job, Oid relid, const char *qualname, const char *source,
						const char *gone, const char *same)
{
	Oid			types[2] = {INT8OID, OIDOID};
	Datum		values[2] = {Int64GetDatum(job->job_id), ObjectIdGetDatum(relid)};
	SPITupleTable *later;
	int64		ngone;

	/*
	 * As the table's owner, as VACUUM reads a table: it may read every
	 * archive of it (archive_grant), a later job's may be another role's,
	 * and the key's operators run with its rights, not more.
	 */
	spi_exec_as(get_rel_owner(relid), psprintf("SELECT pg_catalog.count(*) FROM %s WHERE %s", source, gone),
				0, NULL, NULL, NULL, SPI_OK_SELECT);
	ngone = spi_get_int64(0, 1);
	if (ngone == 0)
		return;
	spi_exec_as_owner(psprintf("SELECT j.job_id, a.archive, a.writer FROM %s.dedup_job j,"
							   " LATERAL (SELECT j.archive_table::pg_catalog.text, NULL::pg_catalog.oid"
							   "  WHERE j.relation OPERATOR(pg_catalog.=) $2"
							   "  UNION ALL SELECT j.undo OPERATOR(pg_catalog.->>) 'deleted', NULL"
							   "  WHERE j.relation OPERATOR(pg_catalog.=) $2"
							   "  UNION ALL SELECT e OPERATOR(pg_catalog.->>) 'archive', j.submitted_by"
							   "  FROM pg_catalog.jsonb_array_elements(COALESCE(j.ref_archives, '[]')) e"
							   "  WHERE (e OPERATOR(pg_catalog.->>) 'oid')::pg_catalog.oid OPERATOR(pg_catalog.=) $2) a(archive, writer)"
							   " WHERE j.job_id OPERATOR(pg_catalog.>) $1 AND j.rolled_back_by IS NULL"
							   " AND a.archive IS NOT NULL AND %s ORDER BY j.job_id DESC",
							   dedup_ext_schema(), job_here_sql("j")),
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
	ereport(NOTICE,
			(errmsg_plural("%lld row of %s that job %lld changed is no longer there, and stays as it is",
						   "%lld rows of %s that job %lld changed are no longer there, and stay as they are",
						   ngone,
						   (long long) ngone, qualname, (long long) job->job_id),
			 get_rel_relispartition(relid) ?
			 errdetail_plural("It was deleted since the job, or moved to another partition by an update of the partition key (there it keeps what the job gave it).",
							  "They were deleted since the job, or moved to another partition by an update of the partition key (there they keep what the job gave them).",
							  ngone) :
			 errdetail_plural("It was deleted since the job.", "They were deleted since the job.",
							  ngone)));
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

/* a referencing table's re-pointed rows, for their UndoLog's callbacks */
typedef struct RepointedRows
{
	Oid			childid;
	Datum	   *cols;			/* the re-pointed columns */
	int			ncols;
	Datum	   *pk;				/* the primary key's */
	int			npk;
} RepointedRows;

static char *
repointed_key(const UndoLog *log, const char *x)
{
	const RepointedRows *r = log->arg;

	return name_list(r->pk, r->npk, psprintf("%s.%%s%%.0s", x), ", ");
}

static char *
repointed_same_row(const UndoLog *log, const char *x, const char *y)
{
	return psprintf("ROW(%s) OPERATOR(pg_catalog.=) ROW(%s)",
					repointed_key(log, x), repointed_key(log, y));
}

/*
 * Archives written before dedup_survivor was kept have NULL there: every
 * row found is taken as the job left it.
 */
static char *
repointed_left_at(const UndoLog *log, const char *x, const char *y)
{
	const RepointedRows *r = log->arg;

	return psprintf("(%s.dedup_survivor IS NULL OR (%s))",
					y, points_where_left(r->childid, r->cols, r->ncols, x, y));
}

static char *
repointed_same_value(const UndoLog *log, const char *x, const char *y)
{
	const RepointedRows *r = log->arg;
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < r->ncols; i++)
	{
		char	   *name = TextDatumGetCString(r->cols[i]);
		const char *q = quote_identifier(name);

		appendStringInfo(&buf, "%s%s.%s %s %s.%s", i > 0 ? " AND " : "", x, q,
						 type_equality(get_atttype(r->childid, get_attnum(r->childid, name))), y, q);
	}
	return buf.data;
}

/*
 * Set the re-pointed columns of a referencing table back.
 *
 * Found by primary key, a row is set back while it points where the job
 * last left it, to where it pointed before (undo_chain.c: a row that two
 * passes of a background merge re-pointed, with a writer's change between
 * them, gets the writer's value).  One that needs nothing is skipped:
 * deleted since, an old value back, or its foreign key NULL again (a NULL
 * column: it references nothing).  One that points elsewhere since was
 * changed by someone else, and the rollback is refused rather than
 * overwrite it.  Found by ctid (no primary key, or one that contains the
 * re-pointed columns), every row listed must be found.
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
		RepointedRows rows = {childid, cols, ncols, pk, npk};
		StringInfoData some_null;
		int64		changed;

		/*
		 * A row re-pointed and later removed as a collision (a later batch's)
		 * went back with its value at the removal (restore_removed_refs): the
		 * walk goes through that entry, and on to the re-points before it
		 * only if the removal found the value they left (no writer's change
		 * between).  Removals archived before they noted dedup_xact (NULL)
		 * sort as the newest entries, as they were.
		 */
		UndoLog		log = {child, archive, "repoint", "delete", NULL, repointed_key, repointed_same_row,
						   repointed_left_at, repointed_same_value, &rows};

		initStringInfo(&some_null);
		for (int i = 0; i < ncols; i++)
			appendStringInfo(&some_null, "%sc.%s IS NULL", i > 0 ? " OR " : "",
							 quote_identifier(TextDatumGetCString(cols[i])));
		log.needs_nothing = some_null.data;
		refuse_removed_by_later(job, childid, child, psprintf("%s a", undo_last_entries(&log)),
								psprintf("NOT EXISTS (SELECT FROM ONLY %s c WHERE %s)", child,
										 repointed_same_row(&log, "c", "a")),
								repointed_same_row(&log, "x", "a"));
		changed = undo_count_changed(&log);
		if (changed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot roll back job %lld: %lld re-pointed rows of %s point elsewhere since",
							(long long) job->job_id, (long long) changed, child),
					 errdetail("Their foreign key has a value the job did not give it; a rollback would overwrite it."),
					 errhint("Compare %s with archive table %s (dedup_survivor: where the job pointed each row), and point those rows back or keep the job's work.",
							 child, archive)));
		return restore_all_from(job, undo_values_before(&log),
								psprintf("UPDATE ONLY %s c SET %s FROM dedup_src a WHERE %s",
										 child, name_list(cols, ncols, "%s = a.%s", ", "),
										 repointed_same_row(&log, "c", "a")),
								written_back.data, "SELECT pg_catalog.count(*) FROM dedup_src", child);
	}

	source = psprintf("(SELECT a.* FROM %s a WHERE a.dedup_action OPERATOR(pg_catalog.=) 'repoint')",
					  archive);
	match = psprintf("c.ctid OPERATOR(pg_catalog.=) a.dedup_new_value::pg_catalog.tid AND %s"
					 " AND (a.dedup_survivor IS NULL OR (%s))",
					 same_other_columns(dedup_relid_by_name(archive), childid, cols, ncols),
					 points_where_left(childid, cols, ncols, "c", "a"));
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
 * A merge's archives of its re-pointed tables hold, in all, as many removed
 * and re-pointed rows as the job counted (refuse_archive_count, for them):
 * the removed ones were put back already, in this transaction, which the
 * error rolls back.
 */
static void
refuse_ref_archive_counts(DedupJob *job, int64 removed, int64 repointed)
{
	if (removed != job->refs_removed || repointed != job->refs_repointed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the archives of the re-pointed tables of job %lld are not as the job left them",
						(long long) job->job_id),
				 errdetail("They hold %lld removed and %lld re-pointed rows; the job counted %lld and %lld.",
						   (long long) removed, (long long) repointed,
						   (long long) job->refs_removed, (long long) job->refs_repointed),
				 errhint("Compare them with the tables by hand; dedup_drop_archive(%lld) drops them.",
						 (long long) job->job_id)));
}

/*
 * A merge's referencing tables are locked against writers as its table is
 * (ShareRowExclusiveLock), right after it, before the rollback reads or
 * writes anything: a writer's uncommitted change of a re-pointed row would
 * be invisible to the checks, and the UPDATE that waited for its row lock
 * would then write over what it committed.
 */
static void
lock_referencing_tables(DedupJob *job)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(job->ref_archives)};

	if (SPI_execute_with_args("SELECT (e OPERATOR(pg_catalog.->>) 'oid')::pg_catalog.oid"
							  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) e",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read the archives of job %lld", (long long) job->job_id);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		oid = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		/* one dropped since (or never noted) is found missing later, and said so */
		if (!isnull)
			LockRelationOid(DatumGetObjectId(oid), ShareRowExclusiveLock);
	}
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
	int64		restored = 0,
				removed = 0,
				repointed = 0;

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
	{
		if (step == 1)
			refuse_ref_archive_counts(job, removed, repointed);
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
				int64		nremoved,
							nrepointed;

				/* the statements that will run: removed rows go back, re-points are undone */
				archive_counts(archive, "repoint", &nremoved, &nrepointed);
				removed += nremoved;
				repointed += nrepointed;
				refuse_rules(job, childid, child,
							 psprintf("%s%s", nremoved ? "3" : "", nrepointed ? "2" : ""));
				restored += restore_removed_refs(job, archive, archiveid, child, childid);
			}
			else
			{
				restored += restore_repointed(job, archive, child, childid, cols, ncols, pk, npk);
				spi_exec_as_owner(psprintf("DROP TABLE %s", archive), 0, NULL, NULL, NULL, SPI_OK_UTILITY);
			}
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
		Relation	arel;
		TupleDesc	desc;
		StringInfoData now,
					then;

		/* the parent's columns compared with the archive's: none dropped or renamed since */
		(void) restorable_columns(createdid, parentid, job->job_id);
		arel = relation_open(createdid, AccessShareLock);
		desc = RelationGetDescr(arel);
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
					   false, false, &found))
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
 * A backfill's lists hold as many rows as it counted (refuse_archive_count,
 * for them): rows a restore appended to a list of the same name (a dump of
 * another database whose job had this id) would be set back, or removed.
 */
static void
refuse_backfill_archive_counts(DedupJob *job)
{
	int64		have[3],
				want[3];

	archive_backfill_counts(job, have, want);
	if (have[0] != want[0] || have[1] != want[1] || have[2] != want[2])
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the archives of job %lld are not as the job left them", (long long) job->job_id),
				 errdetail("They list %lld linked, %lld deleted and %lld created rows; the job counted %lld, %lld and %lld.",
						   (long long) have[0], (long long) have[1], (long long) have[2],
						   (long long) want[0], (long long) want[1], (long long) want[2]),
				 errhint("Compare them with the tables by hand; dedup_drop_archive(%lld) drops them.",
						 (long long) job->job_id)));
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
	char	   *filenode = json_field_text(job->undo, "filenode");
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
	/* the rows it linked, listed by ctid, moved since: another row may be where one was */
	if (filenode && (Oid) strtoul(filenode, NULL, 10) != rel_class(t->relid).relfilenode)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: the rows of %s were moved since the job",
						(long long) job->job_id, t->qualname),
				 errdetail("The table has no primary key: the job listed the rows it linked by their ctid, which VACUUM FULL, CLUSTER, a rewrite or TRUNCATE since gave to other rows."),
				 errhint("Compare %s with archive table %s, which lists the rows the job linked and their values, and set them back by hand.",
						 t->qualname, linked)));
	if (deleted)
		archive_require_intact(deleted, job->job_id, t->relid, InvalidOid);
	if (created)
		archive_require_intact(created, job->job_id, parentid, job->submitted_by);
	refuse_backfill_archive_counts(job);
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
	 * The CHECK that stands in for NOT NULL until it is set, left by a
	 * background job that failed in between (rows it could not link)
	 */
	else if (json_field_text(job->undo, "check"))
		spi_exec_count(psprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", t->qualname,
								quote_identifier(json_field_text(job->undo, "check"))), SPI_OK_UTILITY);
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

/* the table's renamed rows, for their UndoLog's callbacks */
typedef struct RenamedRows
{
	DedupTarget *t;
	const char *col;			/* the renamed column, quoted */
} RenamedRows;

static char *
renamed_key(const UndoLog *log, const char *x)
{
	return sql_pk_list(((const RenamedRows *) log->arg)->t, x);
}

static char *
renamed_same_row(const UndoLog *log, const char *x, const char *y)
{
	return sql_pk_match(((const RenamedRows *) log->arg)->t, x, y);
}

/* compared as bytes: under a nondeterministic collation a change of case is a change */
static char *
renamed_left_at(const UndoLog *log, const char *x, const char *y)
{
	return psprintf("%s.%s::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) %s.dedup_new_value",
					x, ((const RenamedRows *) log->arg)->col, y);
}

static char *
renamed_same_value(const UndoLog *log, const char *x, const char *y)
{
	const char *col = ((const RenamedRows *) log->arg)->col;

	return psprintf("%s.%s::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) %s.%s::pg_catalog.text",
					x, col, y, col);
}

/*
 * Give the renamed rows their key back: each row that still has the value
 * the job's last rename of it gave it gets its value from before that
 * (undo_chain.c: a row that two passes of a background job renamed, with a
 * writer's change between them, gets the writer's value).  A row deleted
 * since, or given an old value back, needs nothing; one changed since keeps
 * what was written, and the rollback is refused rather than overwrite it.
 */
static int64
restore_renamed(DedupJob *job, DedupTarget *t, const char *col)
{
	RenamedRows rows = {t, col};
	UndoLog		log = {t->qualname, job->archive_table, "rename", NULL, NULL, renamed_key, renamed_same_row,
					   renamed_left_at, renamed_same_value, &rows};
	int64		changed;

	refuse_removed_by_later(job, t->relid, t->qualname, psprintf("%s a", undo_last_entries(&log)),
							psprintf("NOT EXISTS (SELECT FROM ONLY %s r WHERE %s)", t->qualname,
									 sql_pk_match(t, "r", "a")),
							sql_pk_match(t, "x", "a"));
	changed = undo_count_changed(&log);
	if (changed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot roll back job %lld: %lld renamed rows of %s have a value the job did not give them",
						(long long) job->job_id, (long long) changed, t->qualname),
				 errdetail("They were changed since the job; a rollback would overwrite that."),
				 errhint("Compare the table with archive table %s (column dedup_new_value), and set those rows back to the job's values or restore them by hand.",
						 job->archive_table)));
	return restore_all_from(job, undo_values_before(&log),
							psprintf("UPDATE ONLY %s r SET %s = a.%s FROM dedup_src a WHERE %s",
									 t->qualname, col, col, sql_pk_match(t, "r", "a")),
							renamed_same_value(&log, "r", "a"), "SELECT pg_catalog.count(*) FROM dedup_src",
							t->qualname);
}

/*
 * The rollback's statements join a table with the job's archives.  Planned
 * from statistics taken before the job changed a large share of the table
 * (a backfill's foreign key all NULL then: "IS NOT NULL" estimated at one
 * row), they loop over the whole archive for each row of the table, for
 * hours on a million rows.  When the table's last ANALYZE came before the
 * job ended and the job changed a tenth of its rows or more (autovacuum's
 * threshold, which it may not have reached yet), analyze it first: a
 * sample, as autovacuum would take.  Only the table's owner may.
 */
static void
analyze_if_stale(DedupJob *job, Oid relid, const char *qualname, int64 changed)
{
	if (!dedup_rel_ownercheck(relid, GetUserId()))
		return;
	/* the job's row, as the extension's owner */
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c"
							" WHERE c.oid OPERATOR(pg_catalog.=) %u"
							" AND %lld OPERATOR(pg_catalog.*) 10 OPERATOR(pg_catalog.>=) c.reltuples"
							" AND COALESCE(GREATEST(pg_catalog.pg_stat_get_last_analyze_time(c.oid),"
							" pg_catalog.pg_stat_get_last_autoanalyze_time(c.oid)), '-infinity')"
							" OPERATOR(pg_catalog.<) (SELECT j.finished_at FROM %s.dedup_job j"
							" WHERE j.job_id OPERATOR(pg_catalog.=) %lld)",
							relid, (long long) changed, dedup_ext_schema(), (long long) job->job_id),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (spi_get_int64(0, 1) > 0)
		spi_exec_count(psprintf("ANALYZE %s", qualname), SPI_OK_UTILITY);
}

/*
 * A dedup's archive holds as many removed and renamed rows as the job
 * counted: rows added since (a restore's COPY into it, an owner's INSERT
 * while the job ran) would be put into the table as if the job had removed
 * them.  dedup_verify's archive_complete check, refused.
 */
static void
refuse_archive_count(DedupJob *job)
{
	int64		deleted,
				renamed;

	archive_counts(job->archive_table, "rename", &deleted, &renamed);
	if (deleted != job->rows_deleted || renamed != job->rows_renamed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("archive table %s of job %lld is not as the job left it", job->archive_table,
						(long long) job->job_id),
				 errdetail("It holds %lld removed and %lld renamed rows; the job counted %lld and %lld.",
						   (long long) deleted, (long long) renamed,
						   (long long) job->rows_deleted, (long long) job->rows_renamed),
				 errhint("Compare it with the table by hand; dedup_drop_archive(%lld) drops it.",
						 (long long) job->job_id)));
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
	job_require_here(job);
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
	if (job->archive_table && strcmp(job->kind, "dedup") == 0)
		refuse_archive_count(job);

	/*
	 * What an archive lists is put back only where the job's submitter may
	 * still write (a merge's writer may add rows to the archive of a table it
	 * does not own).
	 */
	job_act_as_submitter(job, &saved_user, &saved_sec);

	/* the owner check and lock; the key is only needed for the primary key */
	t = dedup_target_open(job->relid, job_param_array(job, "key"), NULL, true,
						  true, ShareRowExclusiveLock);
	if (job->ref_archives)
		lock_referencing_tables(job);
	analyze_if_stale(job, t->relid, t->qualname, job->rows_changed);
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
	{
		/*
		 * The guards a job left (guard.c) would refuse the rows put back;
		 * they go first, so that what is checked next is the user's.
		 */
		if (job->background)
			guards_drop(job_id, t->relid, NULL);
		job_index = job_unique_index(job, t, &job_index_gone);
	}
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
