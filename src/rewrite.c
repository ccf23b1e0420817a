/*
 * rewrite.c
 *		strategy => 'rewrite': write the survivors into a new heap and swap
 *		it in, the way CLUSTER, VACUUM FULL and REFRESH MATERIALIZED VIEW do.
 *
 * When most rows are duplicates, deleting them writes WAL for every one and
 * leaves a heap of dead tuples that only VACUUM FULL gives back; writing the
 * few survivors elsewhere is far cheaper.  make_new_heap() creates an empty
 * heap with the table's exact row layout; one statement fills it with every
 * row but the losers (and archives the losers); finish_heap_swap() gives the
 * table the new heap's storage, rebuilds its indexes and drops the old heap,
 * so constraints, triggers, grants, dependent views and foreign keys, all
 * attached to the table's OID, stay as they were, and the space goes back to
 * the operating system at commit.
 *
 * A rewrite bypasses row-level machinery: no DELETE trigger fires and no
 * foreign-key check runs for the removed rows.  So it is refused for tables
 * that have DELETE triggers or are referenced by foreign keys, and for tables
 * with generated columns (the new heap has no generation expressions); 'auto'
 * then deletes in place.
 */
#include "dedup_ext.h"

#include "access/multixact.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/cluster.h"
#include "commands/tablecmds.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

/* Why the table cannot be rewritten, or NULL when it can. */
const char *
rewrite_obstacle(DedupTarget *t)
{
	Relation	rel = table_open(t->relid, NoLock);
	bool		generated = RelationGetDescr(rel)->constr &&
		RelationGetDescr(rel)->constr->has_generated_stored;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(t->relid)};

	bool		rules = rel->rd_rel->relhasrules;

	table_close(rel, NoLock);
	if (generated)
		return "it has generated columns";
	if (rules)
		return "it has rules, which a rewrite would bypass";
	if (check_enable_rls(t->relid, InvalidOid, true) == RLS_ENABLED)
		return "row-level security hides some of its rows from you";
	if (t->filter_r && !t->filter_immutable)
		return "its filter is not immutable, so the passes of a rewrite could disagree";
	if (SPI_execute_with_args("SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint c"
							  "  WHERE c.contype OPERATOR(pg_catalog.=) 'f'"
							  "  AND c.confrelid OPERATOR(pg_catalog.=) $1),"
							  " EXISTS (SELECT FROM pg_catalog.pg_trigger g"
							  "  WHERE g.tgrelid OPERATOR(pg_catalog.=) $1 AND NOT g.tgisinternal"
							  "  AND (g.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 8) OPERATOR(pg_catalog.<>) 0),"
							  " EXISTS (SELECT FROM pg_catalog.pg_publication_tables p, pg_catalog.pg_class c"
							  "  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
							  "  WHERE c.oid OPERATOR(pg_catalog.=) $1"
							  "  AND p.schemaname OPERATOR(pg_catalog.=) n.nspname"
							  "  AND p.tablename OPERATOR(pg_catalog.=) c.relname)",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read the table's references");
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0)
		return "other tables reference it through foreign keys, whose checks a rewrite would bypass";
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), "t") == 0)
		return "it has DELETE triggers, which a rewrite would not fire";
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3), "t") == 0)
		return "it is published for logical replication, which does not decode a rewrite";
	return NULL;
}

/* the planner's row estimate of a query, from EXPLAIN */
static double
estimated_rows(const char *query)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;

	spi_exec_count(psprintf("EXPLAIN (FORMAT JSON) %s", query), SPI_OK_UTILITY);
	values[0] = CStringGetTextDatum(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	if (SPI_execute_with_args("SELECT ($1::pg_catalog.jsonb OPERATOR(pg_catalog.->) 0"
							  " OPERATOR(pg_catalog.->) 'Plan' OPERATOR(pg_catalog.->>) 'Plan Rows')::pg_catalog.float8",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read a plan estimate");
	return DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The share of the table's rows a dedup would remove, from the planner's
 * statistics: 1 - groups/rows.  may_analyze: analyze a table that never was
 * (not in a dry run, which changes nothing).
 */
double
estimated_loser_share(DedupTarget *t, bool may_analyze)
{
	const char *where = sql_rows_where(t, true);
	Relation	rel = table_open(t->relid, NoLock);
	bool		never_analyzed = rel->rd_rel->reltuples < 0;
	double		rows;
	double		groups;

	table_close(rel, NoLock);
	if (never_analyzed && may_analyze)
		spi_exec_count(psprintf("ANALYZE %s", t->qualname), SPI_OK_UTILITY);
	rows = estimated_rows(psprintf("SELECT FROM ONLY %s r WHERE %s", t->qualname, where));
	groups = estimated_rows(psprintf("SELECT FROM ONLY %s r WHERE %s GROUP BY %s",
									 t->qualname, where, sql_key_list(t, "r")));
	if (rows < 1)
		return 0;
	return groups >= rows ? 0 : 1.0 - groups / rows;
}

/*
 * keep 'first'/'last': the duplicate groups with their survivors go to a
 * small temporary table (one aggregate), then two scans of the table, each
 * hash-joined with it, write the losers to the archive and everything else
 * to the new heap.  Nothing of size "all rows" is held anywhere but in the
 * two heaps written.
 */
static void
fill_by_groups(DedupTarget *t, int64 job_id, const char *archive, const char *newname,
			   const char *cols, const char *rcols, int64 *groups, int64 *deleted)
{
	char	   *g = spi_temp_table_name("keep");
	const char *col = sql_keep_column(t);

	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS %s", g, sql_group_keep(t)),
				   SPI_OK_UTILITY);
	spi_exec_count(psprintf("ANALYZE %s", g), SPI_OK_UTILITY);
	spi_exec_count(psprintf("SELECT pg_catalog.count(*),"
							" COALESCE(pg_catalog.sum(g.dedup_n OPERATOR(pg_catalog.-) 1), 0)::pg_catalog.int8"
							" FROM %s g", g), SPI_OK_SELECT);
	*groups = spi_get_int64(0, 1);
	*deleted = spi_get_int64(0, 2);
	if (archive)
		spi_exec_count(psprintf("INSERT INTO %s SELECT r.*, %lld, 'delete', NULL, NULL"
								" FROM ONLY %s r JOIN %s g ON %s"
								" WHERE %s AND %s OPERATOR(pg_catalog.<>) g.dedup_keep",
								archive, (long long) job_id, t->qualname, g,
								sql_keys_match(t, "r", "g"), sql_rows_where(t, true), col),
					   SPI_OK_INSERT);
	spi_exec_count(psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s"
							" FROM ONLY %s r LEFT JOIN %s g ON %s AND %s"
							" WHERE g.dedup_keep IS NULL OR %s OPERATOR(pg_catalog.=) g.dedup_keep",
							newname, cols, rcols, t->qualname, g,
							sql_keys_match(t, "r", "g"), sql_rows_where(t, true), col),
				   SPI_OK_INSERT);
	spi_exec_count(psprintf("DROP TABLE %s", g), SPI_OK_UTILITY);
}

/* any other keep: the window pass numbers the rows; one statement does the rest */
static void
fill_by_window(DedupTarget *t, int64 job_id, const char *archive, const char *newname,
			   const char *cols, const char *rcols, int64 *groups, int64 *deleted)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "WITH %s, ", sql_losers(t));
	if (archive)
		appendStringInfo(&sql, "dedup_a AS (INSERT INTO %s SELECT r.*, %lld, 'delete', NULL, NULL"
						 " FROM ONLY %s r JOIN dedup_l l ON r.ctid OPERATOR(pg_catalog.=) l.dedup_ctid"
						 " RETURNING 1), ",
						 archive, (long long) job_id, t->qualname);
	appendStringInfo(&sql, "dedup_k AS (INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s"
					 " FROM ONLY %s r WHERE NOT EXISTS (SELECT FROM dedup_l l"
					 " WHERE l.dedup_ctid OPERATOR(pg_catalog.=) r.ctid) RETURNING 1)"
					 " SELECT (SELECT pg_catalog.count(*) FROM dedup_l), %s,"
					 " (SELECT pg_catalog.count(*) FROM dedup_k)%s",
					 newname, cols, rcols, t->qualname, sql_loser_groups(t),
					 archive ? ", (SELECT pg_catalog.count(*) FROM dedup_a)" : "");
	spi_exec_count(sql.data, SPI_OK_SELECT);
	*deleted = spi_get_int64(0, 1);
	*groups = spi_get_int64(0, 2);
}

/*
 * Rewrite the table without the losers.  archive: where the losers go (NULL:
 * nowhere).  Takes an ACCESS EXCLUSIVE lock, as VACUUM FULL does.
 */
void
run_rewrite(DedupTarget *t, int64 job_id, const char *archive, int64 *groups, int64 *deleted)
{
	Relation	rel;
	TupleDesc	desc;
	Oid			newheap;
	char		relpersistence;
	StringInfoData cols;
	StringInfoData rcols;
	char	   *newname;

	LockRelationOid(t->relid, AccessExclusiveLock);
	rel = table_open(t->relid, NoLock);
	CheckTableNotInUse(rel, "dedup_table");
	relpersistence = rel->rd_rel->relpersistence;
	newheap = make_new_heap(t->relid, rel->rd_rel->reltablespace, rel->rd_rel->relam,
							relpersistence, AccessExclusiveLock);
	desc = RelationGetDescr(rel);
	initStringInfo(&cols);
	initStringInfo(&rcols);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = quote_identifier(NameStr(att->attname));

		if (att->attisdropped)
			continue;
		appendStringInfo(&cols, "%s%s", cols.len > 0 ? ", " : "", name);
		appendStringInfo(&rcols, "%sr.%s", rcols.len > 0 ? ", " : "", name);
	}
	table_close(rel, NoLock);
	CommandCounterIncrement();
	newname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(newheap)),
										 get_rel_name(newheap));

	if (sql_keep_column(t))
		fill_by_groups(t, job_id, archive, newname, cols.data, rcols.data, groups, deleted);
	else
		fill_by_window(t, job_id, archive, newname, cols.data, rcols.data, groups, deleted);

	/* the filter, keep and triggers ran since the first check */
	rel = table_open(t->relid, NoLock);
	CheckTableNotInUse(rel, "dedup_table");
	table_close(rel, NoLock);

	/*
	 * Every tuple of the new heap was written by this transaction, so, as
	 * for REFRESH MATERIALIZED VIEW, RecentXmin bounds their xids.
	 */
	finish_heap_swap(t->relid, newheap, false, false, true, true,
					 RecentXmin, ReadNextMultiXactId(), relpersistence);
}
