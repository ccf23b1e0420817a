/*
 * merge.c
 *		action => 'merge': re-point the foreign keys that reference the
 *		losing rows to the survivor of their group, then remove the losers.
 *
 * The losers are written once to a temporary map (loser primary key, the
 * referenced columns of loser and survivor, the survivor's row_id), and every
 * later step is one set-based statement joining a table with that map:
 *   1. for each referencing table, and each of its unique indexes that
 *      contains foreign-key columns, the rows that would collide once
 *      re-pointed are removed (the row that already points at the survivor,
 *      or else the first one, stays);
 *   2. the referencing rows are re-pointed;
 *   3. the losers are removed from the table.
 * Each step archives the original version of the rows it changes in the same
 * statement.  Referencing tables are found in the catalog, in every schema.
 */
#include "dedup_ext.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/ruleutils.h"

/* one foreign key that references the table */
typedef struct RefKey
{
	char	   *conname;
	Oid			childid;
	char	   *child;			/* qualified, quoted */
	int			ncols;
	char	  **cols;			/* referencing columns, quoted */
	char	  **colnames;		/* the same, unquoted */
	AttrNumber *attnums;
	int		   *mapcol;			/* index of the referenced column in the map */
	char	  **eq;				/* conpfeqop, as OPERATOR(...) */
	char	  **collate;		/* fk_collate() of each column */
	List	   *pknames;		/* the child's primary key (unquoted), or NIL */
	List	   *collisions;		/* Collision * */
	char	   *archive;
} RefKey;

/*
 * A unique index of the referencing table that contains re-pointed columns:
 * its key as dedup_k0, dedup_k1, ... for a row that moves (the re-pointed
 * columns taking their new values from the map m), and how a row c that
 * stays has the same key as a moving row x.
 */
typedef struct Collision
{
	char	   *moved;
	char	   *stays;
	char	   *same_key;		/* x (moving) and c (staying) collide */
	char	   *keys;			/* x.dedup_k0, ... */
	char	   *notnull;		/* what makes a key take part in uniqueness */
} Collision;

struct MergePlan
{
	DedupTarget *t;
	List	   *refs;			/* RefKey * */
	List	   *refcols;		/* referenced columns of the table (unquoted) */
	char	   *map;			/* the map of losers: a temporary table, the
								 * same rows for each statement */
	bool		lock_rows;		/* referencing tables are not locked: lock
								 * the rows to re-point (a background batch) */
};

static void find_collisions(RefKey *ref);
static void refuse_nondeterministic_reference(DedupTarget *t, RefKey *ref, int i, AttrNumber pattnum);

static int
refcol_index(MergePlan *plan, const char *name)
{
	ListCell   *lc;

	foreach(lc, plan->refcols)
		if (strcmp(lfirst(lc), name) == 0)
			return foreach_current_index(lc);
	plan->refcols = lappend(plan->refcols, pstrdup(name));
	return list_length(plan->refcols) - 1;
}

/*
 * The caller needs SELECT, UPDATE and DELETE on a table it re-points rows
 * of, and INSERT where rows may collide: the rollback puts removed ones back.
 */
static void
check_child_privileges(RefKey *ref, bool insert)
{
	static const AclMode modes[] = {ACL_SELECT, ACL_UPDATE, ACL_DELETE, ACL_INSERT};

	if (dedup_rel_ownercheck(ref->childid, GetUserId()))
		return;
	for (int i = 0; i < lengthof(modes) - (insert ? 0 : 1); i++)
		if (pg_class_aclcheck(ref->childid, GetUserId(), modes[i]) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", ref->child),
					 insert ?
					 errdetail("Merging re-points rows of %s (foreign key %s), which needs SELECT, UPDATE and DELETE on it, and INSERT: rows that would collide under its unique indexes are removed and archived, and a rollback puts them back.",
							   ref->child, quote_identifier(ref->conname)) :
					 errdetail("Merging re-points rows of %s (foreign key %s), which needs SELECT, UPDATE and DELETE on it.",
							   ref->child, quote_identifier(ref->conname))));
}

/*
 * A re-pointed column that another foreign key of the referencing table
 * shares ((tenant, account) and (tenant, owner), say) moves that key too,
 * to a row nobody chose, unless loser and survivor have the same value in
 * it: the referenced column is one of the dedup key's.  Refused.
 */
static void
refuse_shared_columns(DedupTarget *t, RefKey *ref, Datum *confkey)
{
	for (int i = 0; i < ref->ncols; i++)
	{
		char	   *refcol = get_attname(t->relid, DatumGetInt16(confkey[i]), false);
		bool		in_key = false;
		Oid			argtypes[3] = {OIDOID, TEXTOID, INT2OID};
		Datum		args[3];

		for (int k = 0; k < t->nkeys; k++)
			in_key = in_key || strcmp(t->keys[k].name, refcol) == 0;
		if (in_key)
			continue;
		args[0] = ObjectIdGetDatum(ref->childid);
		args[1] = CStringGetTextDatum(ref->conname);
		args[2] = Int16GetDatum(ref->attnums[i]);
		/*
		 * Not the foreign key this one was cloned from: one that references
		 * a partitioned table has a clone for each of its partitions (this
		 * table being one), on the same columns.
		 */
		if (SPI_execute_with_args("WITH RECURSIVE dedup_a AS ("
								  " SELECT f.conparentid FROM pg_catalog.pg_constraint f"
								  " WHERE f.conrelid OPERATOR(pg_catalog.=) $1 AND f.conname OPERATOR(pg_catalog.=) $2::pg_catalog.name"
								  " AND f.contype OPERATOR(pg_catalog.=) 'f'"
								  " UNION SELECT p.conparentid FROM pg_catalog.pg_constraint p, dedup_a"
								  " WHERE p.oid OPERATOR(pg_catalog.=) dedup_a.conparentid)"
								  " SELECT c.conname::pg_catalog.text FROM pg_catalog.pg_constraint c"
								  " WHERE c.conrelid OPERATOR(pg_catalog.=) $1 AND c.contype OPERATOR(pg_catalog.=) 'f'"
								  " AND c.conname OPERATOR(pg_catalog.<>) $2::pg_catalog.name"
								  " AND $3 OPERATOR(pg_catalog.=) ANY (c.conkey)"
								  " AND c.oid OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT dedup_a.conparentid FROM dedup_a))"
								  " ORDER BY 1 LIMIT 1",
								  3, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "dedup_ext: could not read foreign keys");
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot merge rows of %s: column %s of %s is in foreign key %s and in foreign key %s",
							t->qualname, ref->cols[i], ref->child, quote_identifier(ref->conname),
							quote_identifier(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))),
					 errdetail("Re-pointing %s changes %s, which would move the other foreign key to a row no one chose: a loser and its survivor may differ in %s.",
							   quote_identifier(ref->conname), ref->cols[i], quote_identifier(refcol)),
					 errhint("Add column %s to the key, so that loser and survivor share it.",
							 quote_identifier(refcol))));
	}
}

static bool
pk_has_name(List *names, const char *name)
{
	ListCell   *lc;

	foreach(lc, names)
		if (strcmp(lfirst(lc), name) == 0)
			return true;
	return false;
}

static List *
primary_key_names(Relation rel)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	List	   *names = NIL;
	Relation	idx;

	if (!OidIsValid(pkoid))
		return NIL;
	idx = index_open(pkoid, AccessShareLock);
	for (int i = 0; i < idx->rd_index->indnkeyatts; i++)
		names = lappend(names, get_attname(RelationGetRelid(rel),
										   idx->rd_index->indkey.values[i], false));
	index_close(idx, AccessShareLock);
	return names;
}

/*
 * Find and check every foreign key referencing the table, and with
 * lock_children lock the referencing tables against writes (a background
 * batch relies on its row locks instead).  archive: the merge archives what
 * it changes in the referencing tables.  Runs before anything changes, so
 * that a refusal changes nothing.
 */
MergePlan *
merge_plan(DedupTarget *t, bool lock_children, bool archive)
{
	MergePlan  *plan = palloc0(sizeof(MergePlan));
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(t->relid)};
	SPITupleTable *tuptable;
	uint64		nfks;

	if (t->npk == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("action \"merge\" needs a table with a primary key"),
				 errdetail("%s has none.", t->qualname),
				 errhint("Add a primary key, or use action => 'delete'.")));

	if (SPI_execute_with_args(SQL_REFERENCING_FKS " ORDER BY c.conrelid, c.conname",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read foreign keys");
	tuptable = SPI_tuptable;
	nfks = SPI_processed;
	plan->t = t;
	plan->lock_rows = !lock_children;

	for (uint64 f = 0; f < nfks; f++)
	{
		HeapTuple	tup = tuptable->vals[f];
		TupleDesc	desc = tuptable->tupdesc;
		RefKey	   *ref = palloc0(sizeof(RefKey));
		bool		isnull;
		Datum	   *conkey,
				   *confkey,
				   *eqops;
		int			n;
		Relation	child;

		ref->conname = SPI_getvalue(tup, desc, 1);
		ref->childid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		n = fk_keys(tup, desc, &conkey, &confkey, &eqops);

		if (get_rel_relkind(ref->childid) != RELKIND_RELATION)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot merge rows of %s: foreign key %s is on partitioned table %s",
							t->qualname, quote_identifier(ref->conname), get_rel_name(ref->childid))));
		ref->child = quote_qualified_identifier(get_namespace_name(get_rel_namespace(ref->childid)),
												get_rel_name(ref->childid));
		/* before its lock: a caller with no rights there queues none */
		check_child_privileges(ref, false);
		if (archive)
			archive_refuse_own_names(ref->childid);
		if (check_enable_rls(ref->childid, InvalidOid, true) == RLS_ENABLED)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cannot merge rows of %s: row-level security applies to %s, which references them",
							t->qualname, ref->child),
					 errdetail("Rows it hides from you would be neither re-pointed nor archived, and removing the losers would cascade to them or fail."),
					 errhint("Run the merge as a role that row-level security does not apply to on %s (its owner, or one with BYPASSRLS).",
							 ref->child)));
		if (ref->childid != t->relid)
			LockRelationOid(ref->childid, lock_children ? ShareRowExclusiveLock : AccessShareLock);
		/* what a rule does instead of the re-point or the collision's removal, no archive keeps */
		for (const char *ev = "24"; *ev; ev++)
		{
			char	   *rule = enabled_rule(ref->childid, *ev);

			if (rule)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot merge rows of %s: rule %s rewrites the %s of %s, which references them",
								t->qualname, rule, *ev == '2' ? "UPDATE" : "DELETE", ref->child),
						 errdetail("What a rule does instead, or also, no archive would keep."),
						 errhint("Drop or disable the rule for the job (ALTER TABLE ... DISABLE RULE).")));
		}

		ref->ncols = n;
		ref->cols = palloc(sizeof(char *) * n);
		ref->colnames = palloc(sizeof(char *) * n);
		ref->attnums = palloc(sizeof(AttrNumber) * n);
		ref->mapcol = palloc(sizeof(int) * n);
		ref->eq = palloc(sizeof(char *) * n);
		ref->collate = palloc(sizeof(char *) * n);
		for (int i = 0; i < n; i++)
		{
			ref->attnums[i] = DatumGetInt16(conkey[i]);
			ref->colnames[i] = get_attname(ref->childid, ref->attnums[i], false);
			ref->cols[i] = pstrdup(quote_identifier(ref->colnames[i]));
			ref->mapcol[i] = refcol_index(plan, get_attname(t->relid, DatumGetInt16(confkey[i]), false));
			ref->eq[i] = sql_operator(DatumGetObjectId(eqops[i]));
			ref->collate[i] = fk_collate(t->relid, DatumGetInt16(confkey[i]), ref->childid, ref->attnums[i]);
			refuse_nondeterministic_reference(t, ref, i, DatumGetInt16(confkey[i]));
			if (get_attgenerated(ref->childid, ref->attnums[i]) != '\0')
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot merge rows of %s: column %s of %s, in foreign key %s, is a generated column",
								t->qualname, ref->cols[i], ref->child, quote_identifier(ref->conname)),
						 errdetail("Its value comes from its expression: it cannot be re-pointed to a survivor."),
						 errhint("Point those rows at the survivors through the columns the expression reads, then run the job with action => 'delete'.")));
		}
		child = relation_open(ref->childid, NoLock);
		ref->pknames = primary_key_names(child);
		relation_close(child, NoLock);
		/* a primary key that contains the re-pointed columns changes with them */
		for (int i = 0; i < n && ref->pknames; i++)
			if (pk_has_name(ref->pknames, ref->colnames[i]))
				ref->pknames = NIL;
		refuse_shared_columns(t, ref, confkey);
		find_collisions(ref);
		if (archive && ref->collisions)
			check_child_privileges(ref, true);
		plan->refs = lappend(plan->refs, ref);
	}
	return plan;
}

/*
 * A referencing column under a nondeterministic collation that the column
 * it references does not share: PostgreSQL 15 checks the removal of a loser
 * under the referencing column's collation ('b1' = 'B1'), and rows are
 * re-pointed under the referenced column's, by which a row pointing at
 * another, kept, row ('b1') does not point at the loser ('B1'); the loser's
 * removal would then fail on it, or cascade to it.
 */
static void
refuse_nondeterministic_reference(DedupTarget *t, RefKey *ref, int i, AttrNumber pattnum)
{
	Oid			type,
				pcoll,
				ccoll;
	int32		typmod;

	get_atttypetypmodcoll(t->relid, pattnum, &type, &typmod, &pcoll);
	get_atttypetypmodcoll(ref->childid, ref->attnums[i], &type, &typmod, &ccoll);
	if (!OidIsValid(ccoll) || ccoll == pcoll || get_collation_isdeterministic(ccoll))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot merge rows of %s: column %s of %s in foreign key %s has nondeterministic collation %s, which the column it references does not have",
					t->qualname, ref->cols[i], ref->child, quote_identifier(ref->conname),
					generate_collation_name(ccoll)),
			 errdetail("PostgreSQL checks a loser's removal under the referencing column's collation, under which a row that points at a kept row can equal the loser; the removal would then fail, or cascade to that row."),
			 errhint("Give %s.%s the collation of the column it references.", ref->child, ref->cols[i])));
}

/*
 * c.fk1 = m.dedup_o0 AND ...: the rows of the referencing table c that point
 * at a loser of map m.  In a self-reference, not the losers themselves: they
 * are removed, and moving them could only make them collide with rows the
 * job keeps.
 */
static char *
ref_join(RefKey *ref, MergePlan *plan)
{
	DedupTarget *t = plan->t;
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < ref->ncols; i++)
		appendStringInfo(&buf, "%sc.%s %s m.dedup_o%d%s", i > 0 ? " AND " : "",
						 ref->cols[i], ref->eq[i], ref->mapcol[i], ref->collate[i]);
	if (ref->childid == t->relid)
	{
		appendStringInfo(&buf, " AND NOT EXISTS (SELECT FROM %s l WHERE true", plan->map);
		for (int i = 0; i < t->npk; i++)
			appendStringInfo(&buf, " AND c.%s %s l.dedup_p%d", t->pk[i].quoted, t->pk[i].eq_sql, i);
		appendStringInfoChar(&buf, ')');
	}
	return buf.data;
}

/*
 * The columns of a map row for loser r: its primary key (dedup_p<i>), the
 * referenced columns of loser and survivor (dedup_o<j>, dedup_n<j>) and the
 * survivor's row_id (dedup_survivor).  survivor(expr) is how an expression
 * over r reads in the survivor's row: "%s" over another alias, or a window
 * function over r's group.
 */
static char *
map_columns(MergePlan *plan, const char *survivor_alias, const char *survivor)
{
	DedupTarget *t = plan->t;
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfo(&buf, survivor, sql_row_id(t, survivor_alias));
	appendStringInfoString(&buf, " AS dedup_survivor");
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, ", r.%s AS dedup_p%d", t->pk[i].quoted, i);
	foreach(lc, plan->refcols)
	{
		const char *col = quote_identifier(lfirst(lc));
		int			j = foreach_current_index(lc);

		appendStringInfo(&buf, ", r.%s AS dedup_o%d, ", col, j);
		appendStringInfo(&buf, survivor, psprintf("%s.%s", survivor_alias, col));
		appendStringInfo(&buf, " AS dedup_n%d", j);
	}
	return buf.data;
}

/* the columns of a map row for loser r whose survivor is row s */
char *
merge_map_columns(MergePlan *plan)
{
	return map_columns(plan, "s", "%s");
}

/* The map of a whole-table merge: a temporary table of every loser. */
static char *
create_map(DedupTarget *t, MergePlan *plan)
{
	char	   *map = spi_temp_table_name("merge_map");

	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT s.* FROM (%s) s"
							" WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1",
							map, sql_ranked_dups(t, psprintf(", %s",
														map_columns(plan, "r", "pg_catalog.first_value(%s) OVER dedup_w")))),
				   SPI_OK_UTILITY);
	spi_exec_count(psprintf("ANALYZE %s", map), SPI_OK_UTILITY);
	return map;
}

/*
 * The unique indexes of the referencing table that a re-point could violate:
 * those whose key contains re-pointed columns.  An index on expressions or
 * with a predicate is left to its own check.  A colliding row is removed,
 * which must not cascade any further.
 */
static void
find_collisions(RefKey *ref)
{
	Relation	child = relation_open(ref->childid, AccessShareLock);
	List	   *indexes = RelationGetIndexList(child);
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index index = idx->rd_index;
		bool		plain = heap_attisnull(idx->rd_indextuple, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(idx->rd_indextuple, Anum_pg_index_indexprs, NULL);
		bool		unique = index->indisunique;
		bool		nulls_not_distinct = false;
		bool		overlaps = false;
		StringInfoData moved,
					stays,
					same_key,
					keys,
					notnull;
		Collision  *c;

#ifdef DEDUP_HAVE_NULLS_NOT_DISTINCT
		nulls_not_distinct = index->indnullsnotdistinct;
#endif
		initStringInfo(&moved);
		initStringInfo(&stays);
		initStringInfo(&same_key);
		initStringInfo(&keys);
		initStringInfo(&notnull);
		appendStringInfoString(&notnull, "true");
		for (int k = 0; k < index->indnkeyatts && unique; k++)
		{
			AttrNumber	att = index->indkey.values[k];
			char	   *col;
			char	   *expr;
			const char *isnull;
			Oid			eq = get_opfamily_member(idx->rd_opfamily[k], idx->rd_opcintype[k],
												 idx->rd_opcintype[k], BTEqualStrategyNumber);

			/* an expression: the index is left to its own check (repoint) */
			if (att == 0)
			{
				plain = false;
				continue;
			}
			col = pstrdup(quote_identifier(get_attname(ref->childid, att, false)));
			expr = psprintf("c.%s", col);

			for (int i = 0; i < ref->ncols; i++)
				if (ref->attnums[i] == att)
				{
					expr = psprintf("COALESCE(m.dedup_n%d, c.%s)", ref->mapcol[i], col);
					overlaps = true;
				}
			if (!OidIsValid(eq))
				plain = false;
			appendStringInfo(&moved, ", %s AS dedup_k%d", expr, k);
			appendStringInfo(&stays, ", c.%s AS dedup_k%d", col, k);
			appendStringInfo(&keys, "%sx.dedup_k%d", k > 0 ? ", " : "", k);
			/* a composite column's NULL is the whole value's (sql_null_test) */
			isnull = sql_null_test(get_atttype(ref->childid, att), true);
			if (OidIsValid(eq) && nulls_not_distinct)
				appendStringInfo(&same_key, "%s(x.dedup_k%d %s c.%s OR (x.dedup_k%d%s AND c.%s%s))",
								 k > 0 ? " AND " : "", k, sql_operator(eq), col, k, isnull, col, isnull);
			else if (OidIsValid(eq))
				appendStringInfo(&same_key, "%sx.dedup_k%d %s c.%s", k > 0 ? " AND " : "",
								 k, sql_operator(eq), col);
			if (!nulls_not_distinct)
				appendStringInfo(&notnull, " AND x.dedup_k%d%s", k,
								 sql_null_test(get_atttype(ref->childid, att), false));
		}
		index_close(idx, AccessShareLock);
		if (!unique || !overlaps)
			continue;
		refuse_cascading_references(ref->childid, ref->child, "remove colliding", true, 0, NULL);
		if (!plain)
			continue;
		c = palloc(sizeof(Collision));
		c->moved = moved.data;
		c->stays = stays.data;
		c->same_key = same_key.data;
		c->keys = keys.data;
		c->notnull = notnull.data;
		ref->collisions = lappend(ref->collisions, c);
	}
	relation_close(child, AccessShareLock);
}

/*
 * skipped rows that would collide (ctids: all those to remove, a tid[]
 * Datum) were not removed.  A writer that updated or deleted one first
 * moved it, which is no matter; one still where it was, unchanged, was kept
 * by a BEFORE DELETE trigger (the re-point would then fail on the unique
 * index, saying nothing of it).
 */
static void
collision_skipped_check(RefKey *ref, int64 skipped, Datum ctids)
{
	Oid			types[1] = {TIDARRAYOID};
	Datum		values[1] = {ctids};

	if (skipped <= 0 || !has_before_delete_trigger(ref->childid))
		return;
	if (SPI_execute_with_args(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c"
									   " WHERE c.ctid OPERATOR(pg_catalog.=) ANY ($1)", ref->child),
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not look for the rows a trigger kept");
	skipped = spi_get_int64(0, 1);
	if (skipped > 0)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("%lld rows of %s that would collide once re-pointed were not removed",
						(long long) skipped, ref->child),
				 errdetail("A BEFORE DELETE trigger on %s skipped them; re-pointed, the rows beside them would violate its unique index.",
						   ref->child),
				 errhint("Disable the trigger for the job (ALTER TABLE ... DISABLE TRIGGER), or make it let those rows go.")));
}

/*
 * Remove the rows of the referencing table that would collide under one of
 * its unique indexes once re-pointed.  Within a would-be duplicate set the
 * row that is not moved (it can only be one: the index holds today) stays,
 * else the first by ctid.  Only the rows to move and the rows that have the
 * key of one of them are sorted, not the whole referencing table (the
 * unique index finds the latter).
 */
static int64
remove_collisions(RefKey *ref, MergePlan *plan, int64 job_id)
{
	ListCell   *lc;
	int64		removed = 0;

	foreach(lc, ref->collisions)
	{
		Collision  *coll = lfirst(lc);
		char	   *colliding;
		char	   *del;
		bool		isnull;

		colliding = psprintf("WITH dedup_m AS MATERIALIZED (SELECT c.ctid AS dedup_cctid%s"
							 " FROM ONLY %s c JOIN %s m ON %s),"
							 " dedup_c AS (SELECT x.dedup_cctid, true AS dedup_moved, %s FROM dedup_m x"
							 " UNION ALL SELECT c.ctid, false%s FROM ONLY %s c"
							 " WHERE EXISTS (SELECT FROM dedup_m x WHERE %s)"
							 " AND NOT EXISTS (SELECT FROM dedup_m y WHERE y.dedup_cctid OPERATOR(pg_catalog.=) c.ctid)),"
							 " dedup_x AS (SELECT x.dedup_cctid, pg_catalog.row_number() OVER"
							 " (PARTITION BY %s ORDER BY x.dedup_moved, x.dedup_cctid) AS dedup_rn"
							 " FROM dedup_c x WHERE %s)",
							 coll->moved, ref->child, plan->map, ref_join(ref, plan),
							 coll->keys, coll->stays, ref->child, coll->same_key,
							 coll->keys, coll->notnull);

		/*
		 * In a self-reference the colliding rows are rows of the table
		 * itself, survivors or rows of no group: removing one would remove
		 * a row the job must keep.
		 */
		if (ref->childid == plan->t->relid)
		{
			spi_exec_count(psprintf("%s SELECT pg_catalog.count(*) FROM dedup_x x"
									" WHERE x.dedup_rn OPERATOR(pg_catalog.>) 1", colliding),
						   SPI_OK_SELECT);
			if (spi_get_int64(0, 1) > 0)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("cannot merge rows of %s: re-pointing its foreign key %s would make %lld of its rows collide under a unique index",
								ref->child, quote_identifier(ref->conname), (long long) spi_get_int64(0, 1)),
						 errdetail("The colliding rows reference the table itself; removing them would remove rows the job must keep."),
						 errhint("Change the rows that would collide first; dedup_preview lists the merge's survivors.")));
			continue;
		}
		del = psprintf("%s, dedup_d AS (DELETE FROM ONLY %s c USING dedup_x x"
					   " WHERE c.ctid OPERATOR(pg_catalog.=) x.dedup_cctid"
					   " AND x.dedup_rn OPERATOR(pg_catalog.>) 1 RETURNING c.*)",
					   colliding, ref->child);
		/* the rows removed, and the rows to remove */
		if (ref->archive)
			spi_exec_count(psprintf("%s, dedup_a AS (INSERT INTO %s SELECT d.*, %lld, 'delete', NULL, NULL%s FROM dedup_d d"
									" RETURNING 1) SELECT (SELECT pg_catalog.count(*) FROM dedup_a),"
									" (SELECT pg_catalog.count(*) FROM dedup_x x WHERE x.dedup_rn OPERATOR(pg_catalog.>) 1),"
									" ARRAY(SELECT x.dedup_cctid FROM dedup_x x WHERE x.dedup_rn OPERATOR(pg_catalog.>) 1)",
									del, ref->archive, (long long) job_id, archive_xact_value(ref->archive)),
						   SPI_OK_SELECT);
		else
			spi_exec_count(psprintf("%s SELECT (SELECT pg_catalog.count(*) FROM dedup_d),"
									" (SELECT pg_catalog.count(*) FROM dedup_x x WHERE x.dedup_rn OPERATOR(pg_catalog.>) 1),"
									" ARRAY(SELECT x.dedup_cctid FROM dedup_x x WHERE x.dedup_rn OPERATOR(pg_catalog.>) 1)",
									del),
						   SPI_OK_SELECT);
		removed += spi_get_int64(0, 1);
		collision_skipped_check(ref, spi_get_int64(0, 2) - spi_get_int64(0, 1),
								SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	}
	return removed;
}

/* jsonb_build_array(alias.col, ...) over the foreign key's columns */
static char *
ref_values_json(RefKey *ref, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "pg_catalog.jsonb_build_array(");
	for (int i = 0; i < ref->ncols; i++)
		appendStringInfo(&buf, "%s%s.%s", i > 0 ? ", " : "", alias, ref->cols[i]);
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* Re-point the referencing rows; the archive gets their original versions. */
static int64
repoint(RefKey *ref, MergePlan *plan, int64 job_id)
{
	StringInfoData set;

	StringInfoData survivor_null;
	StringInfoData there;
	int64		moved,
				wanted,
				elsewhere;

	initStringInfo(&set);
	initStringInfo(&survivor_null);
	initStringInfo(&there);
	for (int i = 0; i < ref->ncols; i++)
	{
		const char *refcol = list_nth(plan->refcols, ref->mapcol[i]);

		appendStringInfo(&set, "%s%s = o.dedup_n%d", i > 0 ? ", " : "", ref->cols[i], ref->mapcol[i]);
		/* as the foreign key compares */
		appendStringInfo(&there, "%sc.%s %s o.dedup_n%d%s", i > 0 ? " AND " : "",
						 ref->cols[i], ref->eq[i], ref->mapcol[i], ref->collate[i]);
		appendStringInfo(&survivor_null, "%sm.dedup_n%d%s", i > 0 ? " OR " : "", ref->mapcol[i],
						 sql_null_test(get_atttype(plan->t->relid, get_attnum(plan->t->relid, refcol)), true));
	}

	/*
	 * A survivor whose referenced column is NULL (a UNIQUE column, not the
	 * primary key) cannot be pointed at: the reference would become NULL,
	 * a link lost that no rollback could tell from one a user removed.
	 */
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c JOIN %s m ON %s WHERE %s",
							ref->child, plan->map, ref_join(ref, plan), survivor_null.data),
				   SPI_OK_SELECT);
	if (spi_get_int64(0, 1) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot merge rows of %s: %lld rows of %s reference losers whose survivor has NULL in a referenced column",
						plan->t->qualname, (long long) spi_get_int64(0, 1), ref->child),
				 errdetail("Foreign key %s references a column other than the primary key; re-pointed to such a survivor, the rows would reference nothing.",
						   quote_identifier(ref->conname)),
				 errhint("Give those survivors a value in the referenced column first, or choose other survivors with keep.")));

	/*
	 * The rows to move (dedup_o) are counted against the rows moved: a
	 * BEFORE UPDATE trigger that skips some would leave them pointing at a
	 * loser, which the loser's removal then cascades to or fails on.  The
	 * new ctid goes into dedup_new_value, so that rows of a table without a
	 * primary key can be found again by a rollback, and the values the row
	 * now points to into dedup_survivor, so that a rollback sets back only
	 * rows that still point there.  dedup_off: a row that does not point at
	 * its survivor after all (a trigger kept the old value, and the loser's
	 * removal would cascade to it, or set another).
	 */
	if (!ref->archive)
		spi_exec_count(psprintf("WITH dedup_o AS (SELECT c.ctid AS dedup_octid, m.* FROM ONLY %s c JOIN %s m ON %s),"
								" dedup_u AS (UPDATE ONLY %s c SET %s FROM dedup_o o"
								" WHERE c.ctid OPERATOR(pg_catalog.=) o.dedup_octid"
								" RETURNING (%s) IS NOT TRUE AS dedup_off)"
								" SELECT (SELECT pg_catalog.count(*) FROM dedup_u), (SELECT pg_catalog.count(*) FROM dedup_o),"
								" (SELECT pg_catalog.count(*) FROM dedup_u u WHERE u.dedup_off)",
								ref->child, plan->map, ref_join(ref, plan), ref->child, set.data,
								there.data),
					   SPI_OK_SELECT);
	else
		spi_exec_count(psprintf("WITH dedup_o AS (SELECT c.ctid AS dedup_octid, ROW(c.*)::%s AS dedup_orow, m.*"
								" FROM ONLY %s c JOIN %s m ON %s),"
								" dedup_u AS (UPDATE ONLY %s c SET %s FROM dedup_o o"
								" WHERE c.ctid OPERATOR(pg_catalog.=) o.dedup_octid"
								" RETURNING c.ctid AS dedup_nctid, o.dedup_orow, %s AS dedup_nval,"
								" (%s) IS NOT TRUE AS dedup_off),"
								" dedup_a AS (INSERT INTO %s SELECT (u.dedup_orow).*, %lld, 'repoint',"
								" u.dedup_nctid::pg_catalog.text, u.dedup_nval%s FROM dedup_u u RETURNING 1)"
								" SELECT (SELECT pg_catalog.count(*) FROM dedup_a), (SELECT pg_catalog.count(*) FROM dedup_o),"
								" (SELECT pg_catalog.count(*) FROM dedup_u u WHERE u.dedup_off)",
								ref->child, ref->child, plan->map, ref_join(ref, plan),
								ref->child, set.data, ref_values_json(ref, "c"), there.data,
								ref->archive, (long long) job_id, archive_xact_value(ref->archive)),
					   SPI_OK_SELECT);
	moved = spi_get_int64(0, 1);
	wanted = spi_get_int64(0, 2);
	elsewhere = spi_get_int64(0, 3);
	if (elsewhere > 0)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("%lld re-pointed rows of %s do not point at their survivor in %s",
						(long long) elsewhere, ref->child, plan->t->qualname),
				 errdetail("A BEFORE UPDATE trigger on %s changed the value the job wrote, or kept the old one; removing the losers would cascade to those rows or leave them pointing elsewhere.",
						   ref->child),
				 errhint("Disable the trigger for the job (ALTER TABLE ... DISABLE TRIGGER), or make it let the re-points through.")));
	if (moved != wanted)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("%lld of the %lld rows of %s that reference losers of %s were not re-pointed",
						(long long) (wanted - moved), (long long) wanted, ref->child, plan->t->qualname),
				 errdetail("A BEFORE UPDATE trigger on %s skipped them (or a rule rewrote the UPDATE); removing the losers would cascade to them or fail.",
						   ref->child),
				 errhint("Disable the trigger for the job (ALTER TABLE ... DISABLE TRIGGER), or make it let the re-points through.")));
	return moved;
}

static void
json_string_list(StringInfo buf, List *names)
{
	ListCell   *lc;

	appendStringInfoChar(buf, '[');
	foreach(lc, names)
	{
		if (foreach_current_index(lc) > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, lfirst(lc));
	}
	appendStringInfoChar(buf, ']');
}

/* the referencing columns of ref, as a JSON array of names */
static char *
ref_columns_json(RefKey *ref)
{
	StringInfoData buf;
	List	   *cols = NIL;

	for (int i = 0; i < ref->ncols; i++)
		cols = lappend(cols, ref->colnames[i]);
	initStringInfo(&buf);
	json_string_list(&buf, cols);
	return buf.data;
}

/* what a rollback needs to know of one re-pointed table */
static char *
ref_archive_json(RefKey *ref)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"oid\": %u, \"table\": ", ref->childid);
	escape_json(&buf, ref->child);
	appendStringInfoString(&buf, ", \"archive\": ");
	escape_json(&buf, ref->archive);
	appendStringInfo(&buf, ", \"columns\": %s", ref_columns_json(ref));
	appendStringInfoString(&buf, ", \"pk\": ");
	json_string_list(&buf, ref->pknames);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Give every referencing table of the plan its archive: the one listed in
 * known (a jsonb array of ref_archive_json entries: the archives of the
 * job's earlier batches), or a new one, <table>_<job>_ref<n>.  Returns the
 * jsonb array of them all, known ones first (a foreign key dropped since
 * keeps its entry: its archive still holds rows to roll back).
 */
char *
merge_archives(MergePlan *plan, int64 job_id, const char *known)
{
	Oid			types[3] = {TEXTOID, OIDOID, TEXTOID};
	StringInfoData all;
	int64		n;
	ListCell   *lc;

	spi_exec_count(psprintf("SELECT pg_catalog.jsonb_array_length(%s::pg_catalog.jsonb)",
							sql_literal(known)), SPI_OK_SELECT);
	n = spi_get_int64(0, 1);
	initStringInfo(&all);
	appendStringInfoString(&all, known);
	foreach(lc, plan->refs)
	{
		RefKey	   *ref = lfirst(lc);
		Datum		values[3];

		values[0] = CStringGetTextDatum(known);
		values[1] = ObjectIdGetDatum(ref->childid);
		values[2] = CStringGetTextDatum(ref_columns_json(ref));
		if (SPI_execute_with_args("SELECT e OPERATOR(pg_catalog.->>) 'archive'"
								  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) e"
								  " WHERE (e OPERATOR(pg_catalog.->>) 'oid')::pg_catalog.oid OPERATOR(pg_catalog.=) $2"
								  " AND e OPERATOR(pg_catalog.->) 'columns' OPERATOR(pg_catalog.=) $3::pg_catalog.jsonb",
								  3, types, values, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "dedup_ext: could not read the archives of job %lld", (long long) job_id);
		if (SPI_processed > 0)
		{
			ref->archive = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			continue;
		}
		ref->archive = archive_create(ref->childid, job_id, psprintf("ref%lld", (long long) ++n),
									  GetUserId(), NIL);
		/* all is "[...]": the new entry goes before its closing bracket */
		all.len--;
		appendStringInfo(&all, "%s%s]", all.len > 1 ? ", " : "", ref_archive_json(ref));
	}
	return all.data;
}

/*
 * Re-point the rows of every referencing table from the losers of map to
 * their survivors, removing the rows that would collide first.
 */
void
merge_refs(MergePlan *plan, const char *map, int64 job_id, MergeResult *res)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ListCell   *lc;

	plan->map = pstrdup(map);
	foreach(lc, plan->refs)
	{
		RefKey	   *ref = lfirst(lc);
		char	   *hint = psprintf("Re-pointed rows of %s would violate the constraint above, which merge does not resolve (it removes only rows that would collide under a plain unique index): change those rows first.",
									ref->child);

		/* archived by position too: a background batch's table may have changed */
		if (ref->archive)
			archive_check_columns(ref->childid, ref->archive, job_id);

		/*
		 * A background batch, whose writers keep writing the referencing
		 * table, locks the rows it moves first, in a statement of its own.
		 * A row a writer updated after a statement's snapshot is found gone
		 * by ctid, and skipped, by that statement's DELETE or UPDATE; and
		 * FOR UPDATE within the UPDATE's own statement locks each row only
		 * as the UPDATE reaches it.  Locked first, every row the statements
		 * below move or remove is in its latest version in their snapshots
		 * (READ COMMITTED: each takes one), and stays so until the batch
		 * commits.  In a database whose default is REPEATABLE READ or
		 * SERIALIZABLE, a row updated since the batch's snapshot fails the
		 * lock (40001), and the batch is retried.
		 */
		if (plan->lock_rows)
			spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM ONLY %s c JOIN %s m ON %s FOR UPDATE OF c) l",
									ref->child, plan->map, ref_join(ref, plan)),
						   SPI_OK_SELECT);
		PG_TRY();
		{
			res->refs_removed += remove_collisions(ref, plan, job_id);
		}
		PG_CATCH();
		{
			/* a row removed as a collision that another table references */
			spi_rethrow_with_hint(oldcxt, ERRCODE_FOREIGN_KEY_VIOLATION, 0,
								  psprintf("A row of %s that the merge removes (it would collide once re-pointed) is referenced through a foreign key of another table, and a merge re-points only the rows that reference the table it merges: point those references at the row of %s that stays, or remove them, first.",
										   ref->child, ref->child),
								  true);
		}
		PG_END_TRY();
		PG_TRY();
		{
			res->refs_repointed += repoint(ref, plan, job_id);
		}
		PG_CATCH();
		{
			/*
			 * a unique index on expressions or with a predicate
			 * (find_collisions), an exclusion or CHECK constraint, a foreign
			 * key of another table
			 */
			spi_rethrow_with_hint(oldcxt, ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION, 0, hint, false);
		}
		PG_END_TRY();
	}
}

/* Remove the losers of map from the table, archiving them with their survivor. */
int64
merge_delete_losers(DedupTarget *t, const char *map, int64 job_id, const char *archive)
{
	StringInfoData pkmatch;
	const char *del;
	int64		deleted;

	initStringInfo(&pkmatch);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&pkmatch, "%sr.%s %s m.dedup_p%d", i > 0 ? " AND " : "",
						 t->pk[i].quoted, t->pk[i].eq_sql, i);

	del = psprintf("WITH dedup_d AS (DELETE FROM ONLY %s r USING %s m WHERE %s"
				   " RETURNING ROW(r.*)::%s AS dedup_orow, m.dedup_survivor)",
				   t->qualname, map, pkmatch.data, t->qualname);
	if (archive)
		spi_exec_count(psprintf("%s, dedup_a AS (INSERT INTO %s SELECT (d.dedup_orow).*, %lld,"
								" 'delete', NULL, d.dedup_survivor FROM dedup_d d RETURNING 1)"
								" SELECT (SELECT pg_catalog.count(*) FROM dedup_a), (SELECT pg_catalog.count(*) FROM %s)",
								del, archive, (long long) job_id, map),
					   SPI_OK_SELECT);
	else
		spi_exec_count(psprintf("%s SELECT (SELECT pg_catalog.count(*) FROM dedup_d), (SELECT pg_catalog.count(*) FROM %s)",
								del, map),
					   SPI_OK_SELECT);
	deleted = spi_get_int64(0, 1);
	losers_deleted_check(t, deleted, spi_get_int64(0, 2));
	return deleted;
}

/*
 * Run a merge.  archive: the table's archive (NULL: none, or a dry run's);
 * archived: the call keeps archives (a dry run refuses what it would);
 * background: a dry run of a background job (whose passes may do more).
 */
void
run_merge(DedupTarget *t, int64 job_id, const char *archive, bool archived, bool background,
		  MergeResult *res)
{
	MergePlan  *plan = merge_plan(t, true, archived);
	char	   *map;
	ListCell   *lc;

	/*
	 * A foreign key of the table to itself whose column is in the key
	 * (parent_id, name: a tree imported twice): re-pointing children changes
	 * their key, and makes duplicates of groups this one statement has
	 * already passed.  A background job's next pass merges those.
	 */
	foreach(lc, plan->refs)
	{
		RefKey	   *ref = lfirst(lc);

		if (ref->childid != t->relid || background)
			continue;
		for (int i = 0; i < ref->ncols; i++)
			for (int k = 0; k < t->nkeys; k++)
				if (strcmp(ref->colnames[i], t->keys[k].name) == 0)
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("cannot merge rows of %s in one statement: key column %s is in its foreign key %s to itself",
									t->qualname, t->keys[k].quoted, quote_identifier(ref->conname)),
							 errdetail("Re-pointing rows to their survivors changes their key, which makes new duplicates."),
							 errhint("Use background => true: each pass of the job merges the duplicates the one before made.")));
	}

	map = create_map(t, plan);
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FILTER (WHERE m.dedup_rn OPERATOR(pg_catalog.=) 2),"
							" pg_catalog.count(*) FROM %s m", map),
				   SPI_OK_SELECT);
	res->groups = spi_get_int64(0, 1);
	/* a dry run has no job, and shows nothing */
	if (job_id != 0)
		progress_counts(spi_get_int64(0, 2), -1, -1, -1);
	if (archive)
		res->ref_archives = plan->refs ? merge_archives(plan, job_id, "[]") : NULL;
	merge_refs(plan, map, job_id, res);
	res->rows_deleted = merge_delete_losers(t, map, job_id, archive);
	spi_exec_count(psprintf("DROP TABLE %s", map), SPI_OK_UTILITY);
}
