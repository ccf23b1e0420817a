/*
 * unique.c
 *		add_unique: the unique index that keeps duplicates from coming back.
 *
 * The index is built first (CREATE UNIQUE INDEX takes a SHARE lock, which
 * lets readers in) and then, when it can be one, attached as a table
 * constraint (ADD CONSTRAINT ... USING INDEX is a catalog change only), so
 * INSERT ... ON CONFLICT (key) and ON CONFLICT ON CONSTRAINT both work.  With
 * a filter it stays a partial unique index, which ON CONFLICT (key) WHERE
 * <filter> infers.
 */
#include "dedup_ext.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/pg_am.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"

/*
 * The name of the index: like PostgreSQL's own, table_col1_col2_key for a
 * constraint (no filter), table_col1_col2_idx for a partial index.
 */
char *
unique_index_name(DedupTarget *t, bool *is_constraint)
{
	StringInfoData colnames;

	initStringInfo(&colnames);
	for (int i = 0; i < t->nkeys; i++)
		appendStringInfo(&colnames, "%s%s", i > 0 ? "_" : "", t->keys[i].name);
	*is_constraint = (t->filter_bare == NULL);
	return ChooseRelationName(t->relname, colnames.data, *is_constraint ? "key" : "idx",
							  get_rel_namespace(t->relid), *is_constraint);
}

/* CREATE UNIQUE INDEX [CONCURRENTLY] name ON table (key) [NULLS NOT DISTINCT] [WHERE filter] */
char *
unique_index_sql(DedupTarget *t, const char *name, bool concurrently)
{
	const char *nulls_clause = "";

	if (!t->nulls_distinct)
	{
#ifdef DEDUP_HAVE_NULLS_NOT_DISTINCT
		nulls_clause = " NULLS NOT DISTINCT";
#else
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("add_unique with nulls_distinct => false needs PostgreSQL 15 or later")));
#endif
	}
	return psprintf("CREATE UNIQUE INDEX%s %s ON %s (%s)%s%s%s",
					concurrently ? " CONCURRENTLY" : "", quote_identifier(name), t->qualname,
					sql_key_list(t, NULL), nulls_clause,
					t->filter_bare ? " WHERE " : "", t->filter_bare ? t->filter_bare : "");
}

/* attach the index as the table's UNIQUE constraint (a catalog change only) */
char *
unique_constraint_sql(DedupTarget *t, const char *name)
{
	return psprintf("ALTER TABLE %s ADD CONSTRAINT %s UNIQUE USING INDEX %s",
					t->qualname, quote_identifier(name), quote_identifier(name));
}

char *
unique_create(DedupTarget *t, bool *is_constraint)
{
	char	   *name = unique_index_name(t, is_constraint);

	spi_exec_count(unique_index_sql(t, name, false), SPI_OK_UTILITY);
	if (*is_constraint)
		spi_exec_count(unique_constraint_sql(t, name), SPI_OK_UTILITY);
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(t->relid)), name);
}

/*
 * Does index idx keep the key unique as add_unique's index would?  Valid,
 * unique and checked at once (ON CONFLICT can use it), on the key's columns alone (in any order), each compared with the
 * key's equality (the operator family's, under the column's collation),
 * NULLs treated alike, and with the filter as its predicate (pred, in the
 * form the relation cache gives an index predicate) or none.
 */
static bool
index_enforces_key(DedupTarget *t, Relation idx, List *pred)
{
	Form_pg_index ix = idx->rd_index;

	if (!ix->indisunique || !ix->indimmediate ||
		!ix->indisvalid || !ix->indisready || !ix->indislive ||
		idx->rd_rel->relam != BTREE_AM_OID || ix->indnkeyatts != t->nkeys ||
		RelationGetIndexExpressions(idx) != NIL ||
		!equal(RelationGetIndexPredicate(idx), pred))
		return false;
#ifdef DEDUP_HAVE_NULLS_NOT_DISTINCT
	if (ix->indnullsnotdistinct == t->nulls_distinct)
		return false;
#endif
	for (int i = 0; i < t->nkeys; i++)
	{
		AttrNumber	attnum = get_attnum(t->relid, t->keys[i].name);
		Oid			type;
		int32		typmod;
		Oid			collation;
		int			col;

		get_atttypetypmodcoll(t->relid, attnum, &type, &typmod, &collation);

		for (col = 0; col < ix->indnkeyatts; col++)
			if (ix->indkey.values[col] == attnum)
				break;
		if (col == ix->indnkeyatts ||
			idx->rd_indcollation[col] != collation ||
			get_opfamily_member(idx->rd_opfamily[col], idx->rd_opcintype[col], idx->rd_opcintype[col],
								BTEqualStrategyNumber) != t->keys[i].eq_opr)
			return false;
	}
	return true;
}

/*
 * An index of the table that already does what add_unique's would (its
 * qualified name), or NULL.  A second run of the same call finds the index
 * the first one built, and builds no copy of it.
 */
char *
unique_existing(DedupTarget *t)
{
	Relation	rel = table_open(t->relid, AccessShareLock);
	List	   *indexes = RelationGetIndexList(rel);
	List	   *pred = NIL;
	ListCell   *lc;
	char	   *found = NULL;

	if (t->filter_expr)
	{
		Node	   *expr = eval_const_expressions(NULL, copyObject(t->filter_expr));

		pred = make_ands_implicit(canonicalize_qual((Expr *) expr, false));
		fix_opfuncids((Node *) pred);
	}
	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);

		if (index_enforces_key(t, idx, pred))
			found = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(idx)),
											   RelationGetRelationName(idx));
		index_close(idx, AccessShareLock);
		if (found)
			break;
	}
	list_free(indexes);
	table_close(rel, AccessShareLock);
	return found;
}
