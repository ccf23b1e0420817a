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
#include "access/toast_internals.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
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
#include "utils/syscache.h"

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
							  "  AND p.tablename OPERATOR(pg_catalog.=) c.relname),"
							  " EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) $1"
							  "  AND NOT (i.indisvalid AND i.indisready AND i.indislive))",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read the table's references");
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0)
		return "other tables reference it through foreign keys, whose checks a rewrite would bypass";
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), "t") == 0)
		return "it has DELETE triggers, which a rewrite would not fire";
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3), "t") == 0)
		return "it is published for logical replication, which does not decode a rewrite";
	/* REINDEX, which a rewrite ends with, makes an invalid index valid */
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4), "t") == 0)
		return "it has an invalid index (a failed CREATE INDEX CONCURRENTLY leaves one), which a rewrite would rebuild and make valid";
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
 * The share of the rows a dedup would remove, from a Bernoulli sample of
 * about as many rows as ANALYZE reads (30,000; the scan reads every page,
 * about 50 ms for five million cached rows).  A group seen at least ten
 * times in the sample is counted as it is: one group of about c/q rows, q
 * the sampled share.  The rest are estimated the way ANALYZE estimates a
 * column's distinct values (Haas and Stokes' Duj1, as in analyze.c): n
 * sampled rows in d groups, f1 of them alone in the sample, of n/q rows.
 * Duj1 over every group would take a table whose rows are all unique but
 * for one key shared by 1% of them for mostly duplicates.
 */
static double
sampled_loser_share(DedupTarget *t, const char *where, double rows)
{
	double		q = rows > 30000 ? 30000 / rows : 1;
	double		n,
				d,
				f1,
				heavy_rows,
				heavy_groups,
				groups;

	spi_exec_count(psprintf("SELECT pg_catalog.sum(s.c) FILTER (WHERE s.c OPERATOR(pg_catalog.<) 10)::pg_catalog.int8,"
							" pg_catalog.count(*) FILTER (WHERE s.c OPERATOR(pg_catalog.<) 10),"
							" pg_catalog.count(*) FILTER (WHERE s.c OPERATOR(pg_catalog.=) 1),"
							" pg_catalog.sum(s.c) FILTER (WHERE s.c OPERATOR(pg_catalog.>=) 10)::pg_catalog.int8,"
							" pg_catalog.count(*) FILTER (WHERE s.c OPERATOR(pg_catalog.>=) 10)"
							" FROM (SELECT pg_catalog.count(*) AS c FROM ONLY %s r"
							" TABLESAMPLE pg_catalog.bernoulli (%g) REPEATABLE (0) WHERE %s GROUP BY %s) s",
							t->qualname, 100 * q, where, sql_key_list(t, "r")),
				   SPI_OK_SELECT);
	n = (double) spi_get_int64(0, 1);
	d = (double) spi_get_int64(0, 2);
	f1 = (double) spi_get_int64(0, 3);
	heavy_rows = (double) spi_get_int64(0, 4);
	heavy_groups = (double) spi_get_int64(0, 5);
	if (n + heavy_rows < 1)
		return 0;
	groups = heavy_groups;
	if (n >= 1)
	{
		double		light = n * d / ((n - f1) + f1 * q);

		groups += Min(Max(light, d), n / q);
	}
	return 1.0 - groups / ((n + heavy_rows) / q);
}

/*
 * The share of the table's rows a dedup would remove: 1 - groups/rows, from
 * the planner's statistics.  may_analyze: analyze a table that never was
 * (not in a dry run, which changes nothing).
 *
 * For more than one column the planner counts at most a tenth of the rows
 * as groups (or the most distinct column's count), unless extended
 * statistics on the columns say more: a table whose pairs are all distinct
 * looks 90% duplicate, and 'auto' would rewrite a table with nothing to
 * remove.  So when that estimate says more than a quarter of the rows would
 * go (where the choices it makes change), a sample decides, if may_sample.
 */
double
estimated_loser_share(DedupTarget *t, bool may_analyze, bool may_sample)
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
	if (t->nkeys > 1 && groups < 0.75 * rows && may_sample)
		return sampled_loser_share(t, where, rows);
	return groups >= rows ? 0 : 1.0 - groups / rows;
}

/* sql_group_keep's rows in a new, analyzed temporary table; its name */
static char *
keep_groups_table(DedupTarget *t)
{
	char	   *g = spi_temp_table_name("keep");

	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS %s", g, sql_group_keep(t)),
				   SPI_OK_UTILITY);
	spi_exec_count(psprintf("ANALYZE %s", g), SPI_OK_UTILITY);
	return g;
}

/*
 * Every group of the key (a row with a NULL in it, under nulls_distinct, is
 * a group of its own: dedup_null) with its survivor (dedup_keep) and size
 * (dedup_n), in a new, analyzed temporary table; its name.
 */
static char *
survivor_groups_table(DedupTarget *t)
{
	char	   *g = spi_temp_table_name("groups");

	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS"
							" SELECT pg_catalog.%s(%s) AS dedup_keep, pg_catalog.count(*) AS dedup_n,"
							" %s AS dedup_null FROM ONLY %s r GROUP BY %s",
							g, t->keep_extreme == 'l' ? "max" : "min", sql_keep_column(t),
							sql_any_key_null(t, "r"), t->qualname, sql_key_list(t, "r")),
				   SPI_OK_UTILITY);
	spi_exec_count(psprintf("ANALYZE %s", g), SPI_OK_UTILITY);
	return g;
}

/*
 * The losers a delete would remove, counted, as a share of all the table's
 * rows (a rewrite copies every row, those the filter leaves out too).  With
 * keep_groups, where a rewrite reads a table of groups (keep 'first' or
 * 'last'), the count is that table, made here for the rewrite to read
 * (t->keep_groups), so that counting costs it nothing: every group with its
 * survivor (no filter; its sizes add up to the table's rows), or the
 * duplicate groups of the filter's rows.  Otherwise one aggregate over the
 * rows the filter and nulls_distinct let in.  keep_groups: the caller may
 * write (not a dry run, which may run on a standby) and holds a lock that
 * keeps writers out until the rewrite.  count_rows: the table's rows are
 * counted too, not estimated (a dry run on a table never analyzed, whose
 * estimate is the planner's guess from its size).
 */
double
counted_loser_share(DedupTarget *t, bool keep_groups, bool count_rows)
{
	double		rows;

	if (count_rows)
	{
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s r", t->qualname), SPI_OK_SELECT);
		rows = (double) spi_get_int64(0, 1);
	}
	else
		rows = estimated_rows(psprintf("SELECT FROM ONLY %s r", t->qualname));

	if (keep_groups && sql_keep_column(t) != NULL && t->filter_r == NULL)
	{
		t->keep_groups = survivor_groups_table(t);
		spi_exec_count(psprintf("SELECT COALESCE(pg_catalog.sum(g.dedup_n), 0)::pg_catalog.int8,"
								" COALESCE(pg_catalog.sum(g.dedup_n OPERATOR(pg_catalog.-) 1)"
								" FILTER (WHERE NOT g.dedup_null), 0)::pg_catalog.int8 FROM %s g",
								t->keep_groups), SPI_OK_SELECT);
		rows = (double) spi_get_int64(0, 1);
	}
	else
	{
		if (keep_groups && sql_keep_column(t) != NULL)
		{
			t->keep_groups = keep_groups_table(t);
			spi_exec_count(psprintf("SELECT COALESCE(pg_catalog.sum(g.dedup_n), 0)::pg_catalog.int8,"
									" COALESCE(pg_catalog.sum(g.dedup_n OPERATOR(pg_catalog.-) 1), 0)::pg_catalog.int8"
									" FROM %s g", t->keep_groups), SPI_OK_SELECT);
		}
		else
			spi_exec_count(psprintf("SELECT pg_catalog.sum(s.c)::pg_catalog.int8,"
									" (pg_catalog.sum(s.c) OPERATOR(pg_catalog.-) pg_catalog.count(*))::pg_catalog.int8"
									" FROM (SELECT pg_catalog.count(*) AS c FROM ONLY %s r WHERE %s GROUP BY %s) s",
									t->qualname, sql_rows_where(t, true), sql_key_list(t, "r")),
						   SPI_OK_SELECT);
		rows = Max(rows, (double) spi_get_int64(0, 1));
	}
	return rows < 1 ? 0 : (double) spi_get_int64(0, 2) / rows;
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
	char	   *g = t->keep_groups ? t->keep_groups : keep_groups_table(t);
	const char *col = sql_keep_column(t);

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
	t->keep_groups = NULL;
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
 * keep 'first'/'last' over the whole table (no filter): one aggregate over
 * the key finds every group's survivor, and the new heap gets exactly those
 * rows, fetched by ctid, so the table is read once.  Returns the temporary
 * table of the survivors' ctids (dedup_ctid).
 *
 * The aggregate groups by the key alone, so that the planner sizes it from
 * the key's statistics; the rows with a NULL in their key (each a group of
 * its own) are then read separately, and only when the aggregate saw one.
 * Both temporary tables are analyzed: with few groups the survivors are then
 * fetched through the primary key and by TID, with many by a hash join, and
 * neither needs memory beyond work_mem.
 */
static char *
fill_by_survivors(DedupTarget *t, const char *newname, const char *cols, const char *rcols,
				  int64 *groups, int64 *deleted)
{
	char	   *g = t->keep_groups ? t->keep_groups : survivor_groups_table(t);
	char	   *s = spi_temp_table_name("survivors");
	const char *anynull = sql_any_key_null(t, "r");

	t->keep_groups = NULL;
	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS %s"
							" UNION ALL SELECT r.ctid, 1 FROM ONLY %s r"
							" WHERE %s AND EXISTS (SELECT FROM %s g WHERE g.dedup_null)",
							s,
							t->npk == 0
							? psprintf("SELECT g.dedup_keep AS dedup_ctid, g.dedup_n FROM %s g"
									   " WHERE NOT g.dedup_null", g)
							: psprintf("SELECT r.ctid AS dedup_ctid, g.dedup_n FROM %s g"
									   " JOIN ONLY %s r ON %s %s g.dedup_keep WHERE NOT g.dedup_null",
									   g, t->qualname, sql_keep_column(t), t->pk[0].eq_sql),
							t->qualname, anynull, g),
				   SPI_OK_UTILITY);
	spi_exec_count(psprintf("ANALYZE %s", s), SPI_OK_UTILITY);
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FILTER (WHERE s.dedup_n OPERATOR(pg_catalog.>) 1),"
							" COALESCE(pg_catalog.sum(s.dedup_n OPERATOR(pg_catalog.-) 1), 0)::pg_catalog.int8"
							" FROM %s s", s),
				   SPI_OK_SELECT);
	*groups = spi_get_int64(0, 1);
	*deleted = spi_get_int64(0, 2);
	/* in ctid order: the new heap keeps the table's physical order */
	spi_exec_count(psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s s"
							" JOIN ONLY %s r ON r.ctid OPERATOR(pg_catalog.=) s.dedup_ctid"
							" ORDER BY s.dedup_ctid",
							newname, cols, rcols, s, t->qualname),
				   SPI_OK_INSERT);
	return s;
}

/*
 * Can the table's storage itself become the archive (instead of a copy of
 * every removed row)?  Only when the new heap was filled by
 * fill_by_survivors (the survivors, few, are then deleted from it), when the
 * table is permanent and WAL-logged (with wal_level minimal a new heap's
 * writes skip WAL, and storage that changes hands would need the relcache
 * bookkeeping core's own swap does), and when no column takes its value
 * from a default added after rows were written: those values live in the
 * table's catalog entry, which the adopted storage leaves behind.
 */
static bool
can_adopt_storage(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (!XLogIsNeeded() || rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
		return false;
	for (int i = 0; i < desc->natts; i++)
		if (TupleDescAttr(desc, i)->atthasmissing)
			return false;
	return true;
}

/* the TOAST table toastid belongs to heap (and goes when heap is dropped) */
static void
set_toast_owner(Oid toastid, Oid heap)
{
	ObjectAddress toast = {RelationRelationId, toastid, 0};
	ObjectAddress owner = {RelationRelationId, heap, 0};

	if (!OidIsValid(toastid))
		return;
	deleteDependencyRecordsFor(RelationRelationId, toastid, false);
	recordDependencyOn(&toast, &owner, DEPENDENCY_INTERNAL);
}

/*
 * make_new_heap() marks the new heap's TOAST table as a rewrite's transient
 * relation, whose changes logical decoding skips; the table keeps it, so it
 * becomes an ordinary relation again.
 */
static void
clear_relrewrite(Oid relid)
{
	Relation	classrel;
	HeapTuple	tup;

	if (!OidIsValid(relid))
		return;
	classrel = table_open(RelationRelationId, RowExclusiveLock);
	tup = SearchSysCacheCopy1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "dedup_ext: cache lookup failed for relation %u", relid);
	((Form_pg_class) GETSTRUCT(tup))->relrewrite = InvalidOid;
	CatalogTupleUpdate(classrel, &tup->t_self, tup);
	table_close(classrel, RowExclusiveLock);
}

/* name a TOAST table and its index after their heap, through a free name */
static void
rename_toast(Oid toastid, const char *name)
{
	Oid			index;

	if (!OidIsValid(toastid))
		return;
	index = toast_get_valid_index(toastid, AccessExclusiveLock);
	RenameRelationInternal(toastid, name, true, false);
	CommandCounterIncrement();
	RenameRelationInternal(index, psprintf("%s_index", name), true, true);
	CommandCounterIncrement();
}

/*
 * Give the table the new heap's storage and the new heap the table's old
 * storage, TOAST tables included, as finish_heap_swap() does, but keep the
 * new heap instead of dropping it: it now holds every row the table had.
 * Then rebuild the table's indexes, as finish_heap_swap() does.
 */
static void
swap_keeping_old(Oid relid, Oid newheap)
{
	Relation	classrel = table_open(RelationRelationId, RowExclusiveLock);
	HeapTuple	tup1 = SearchSysCacheCopy1(RELOID, ObjectIdGetDatum(relid));
	HeapTuple	tup2 = SearchSysCacheCopy1(RELOID, ObjectIdGetDatum(newheap));
	Form_pg_class r1;
	Form_pg_class r2;
	FormData_pg_class saved;
	ReindexParams params = {0};

	if (!HeapTupleIsValid(tup1) || !HeapTupleIsValid(tup2))
		elog(ERROR, "dedup_ext: cache lookup failed for relation %u or %u", relid, newheap);
	r1 = (Form_pg_class) GETSTRUCT(tup1);
	r2 = (Form_pg_class) GETSTRUCT(tup2);
	saved = *r1;
	r1->relfilenode = r2->relfilenode;
	r1->reltoastrelid = r2->reltoastrelid;
	r1->relpages = r2->relpages;
	r1->reltuples = r2->reltuples;
	r1->relallvisible = r2->relallvisible;
	/* every tuple of the new storage was written by this transaction */
	r1->relfrozenxid = RecentXmin;
	r1->relminmxid = ReadNextMultiXactId();
	r2->relfilenode = saved.relfilenode;
	r2->reltoastrelid = saved.reltoastrelid;
	r2->relpages = saved.relpages;
	r2->reltuples = saved.reltuples;
	r2->relallvisible = saved.relallvisible;
	r2->relfrozenxid = saved.relfrozenxid;
	r2->relminmxid = saved.relminmxid;
	/* make_new_heap() marked it a transient relation, whose changes logical decoding skips */
	r2->relrewrite = InvalidOid;
	CatalogTupleUpdate(classrel, &tup1->t_self, tup1);
	CatalogTupleUpdate(classrel, &tup2->t_self, tup2);
	table_close(classrel, RowExclusiveLock);
	CommandCounterIncrement();

	set_toast_owner(r1->reltoastrelid, relid);
	set_toast_owner(r2->reltoastrelid, newheap);
	clear_relrewrite(r1->reltoastrelid);
	CommandCounterIncrement();
	rename_toast(r2->reltoastrelid, psprintf("pg_toast_%u_dedup_ext", newheap));
	rename_toast(r1->reltoastrelid, psprintf("pg_toast_%u", relid));
	rename_toast(r2->reltoastrelid, psprintf("pg_toast_%u", newheap));

	dedup_reindex_relation(relid, REINDEX_REL_SUPPRESS_INDEX_USE | REINDEX_REL_CHECK_CONSTRAINTS |
						   REINDEX_REL_FORCE_INDEXES_PERMANENT, &params);
}

/*
 * Rewrite the table without the losers.  archive: keep them in the job's
 * archive, whose name is returned (NULL: none).  Takes an ACCESS EXCLUSIVE
 * lock, as VACUUM FULL does.
 */
char *
run_rewrite(DedupTarget *t, int64 job_id, bool archive, int64 *groups, int64 *deleted)
{
	Relation	rel;
	TupleDesc	desc;
	Oid			newheap;
	char		relpersistence;
	StringInfoData cols;
	StringInfoData rcols;
	char	   *newname;
	bool		by_survivors = sql_keep_column(t) != NULL && t->filter_r == NULL;
	bool		adopt;
	char	   *archive_table = NULL;
	char	   *survivors = NULL;

	LockRelationOid(t->relid, AccessExclusiveLock);
	rel = table_open(t->relid, NoLock);
	CheckTableNotInUse(rel, "dedup_table");
	relpersistence = rel->rd_rel->relpersistence;
	adopt = archive && by_survivors && can_adopt_storage(rel);
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

	if (archive && !adopt)
		archive_table = archive_create(t->relid, job_id, NULL, InvalidOid, NIL);
	if (by_survivors)
	{
		survivors = fill_by_survivors(t, newname, cols.data, rcols.data, groups, deleted);
		if (archive_table)
			spi_exec_count(psprintf("INSERT INTO %s SELECT r.*, %lld, 'delete', NULL, NULL"
									" FROM ONLY %s r WHERE NOT EXISTS (SELECT FROM %s s"
									" WHERE s.dedup_ctid OPERATOR(pg_catalog.=) r.ctid)",
									archive_table, (long long) job_id, t->qualname, survivors),
						   SPI_OK_INSERT);
	}
	else if (sql_keep_column(t))
		fill_by_groups(t, job_id, archive_table, newname, cols.data, rcols.data, groups, deleted);
	else
		fill_by_window(t, job_id, archive_table, newname, cols.data, rcols.data, groups, deleted);

	/* the filter, keep and triggers ran since the first check */
	rel = table_open(t->relid, NoLock);
	CheckTableNotInUse(rel, "dedup_table");
	table_close(rel, NoLock);

	if (!adopt)
	{
		/*
		 * Every tuple of the new heap was written by this transaction, so, as
		 * for REFRESH MATERIALIZED VIEW, RecentXmin bounds their xids.
		 */
		finish_heap_swap(t->relid, newheap, false, false, true, true,
						 RecentXmin, ReadNextMultiXactId(), relpersistence);
		return archive_table;
	}

	/*
	 * The old storage becomes the archive: it already holds every removed
	 * row, written once, when the table was filled.  Only the survivors,
	 * now in the table, leave it.
	 */
	swap_keeping_old(t->relid, newheap);
	archive_table = archive_adopt(newheap, t->relid, job_id);
	/* the archive belongs to the extension's owner (archive_grant) */
	spi_exec_as_owner(psprintf("DELETE FROM %s a USING %s s"
							   " WHERE a.ctid OPERATOR(pg_catalog.=) s.dedup_ctid", archive_table, survivors),
					  0, NULL, NULL, NULL, SPI_OK_DELETE);
	return archive_table;
}
