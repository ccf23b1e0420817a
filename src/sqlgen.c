/*
 * sqlgen.c
 *		SQL fragments generated from a DedupTarget.
 *
 * Every fragment quotes identifiers, schema-qualifies functions, types and
 * operators (OPERATOR(pg_catalog.=) and the key types' own equality
 * operators), and refers to the table through an alias, normally "r", so
 * that the deparsed filter and keep (which use "r.") fit in.
 */
#include "dedup_ext.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

char *
sql_literal(const char *s)
{
	return quote_literal_cstr(s);
}

/*
 * "r.a, r.b" (alias NULL: "a, b").  under_c: the string columns whose
 * equality is bytewise (DedupColumn.bytewise_eq) get COLLATE "C".
 */
static char *
key_list(DedupTarget *t, const char *alias, bool under_c)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < t->nkeys; i++)
		appendStringInfo(&buf, "%s%s%s%s%s", i > 0 ? ", " : "",
						 alias ? alias : "", alias ? "." : "", t->keys[i].quoted,
						 under_c && t->keys[i].bytewise_eq ? " COLLATE pg_catalog.\"C\"" : "");
	return buf.data;
}

char *
sql_key_list(DedupTarget *t, const char *alias)
{
	return key_list(t, alias, false);
}

/*
 * The key as a PARTITION BY list: a sort under COLLATE "C" compares with
 * memcmp instead of strcoll and finds the same groups.
 */
char *
sql_partition_list(DedupTarget *t, const char *alias)
{
	return key_list(t, alias, true);
}

static char *
json_object_of(DedupColumn *cols, int ncols, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "pg_catalog.jsonb_build_object(");
	for (int i = 0; i < ncols; i++)
		appendStringInfo(&buf, "%s%s, %s.%s", i > 0 ? ", " : "",
						 sql_literal(cols[i].name), alias, cols[i].quoted);
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* key_values: {"a": .., "b": ..} */
char *
sql_key_json(DedupTarget *t, const char *alias)
{
	return json_object_of(t->keys, t->nkeys, alias);
}

/* row_id: the primary key as a jsonb object, or {"ctid": "(0,1)"} */
char *
sql_row_id(DedupTarget *t, const char *alias)
{
	if (t->npk == 0)
		return psprintf("pg_catalog.jsonb_build_object('ctid', %s.ctid::pg_catalog.text)", alias);
	return json_object_of(t->pk, t->npk, alias);
}

/*
 * " IS NULL" (is_null) or " IS NOT NULL" for a key column: for a composite
 * type those test every field, so '(1,)' would be neither, while the key's
 * equality, the hash of candidates.c and a unique index all take it for a
 * value like any other; IS [NOT] DISTINCT FROM NULL tests the whole value.
 */
const char *
sql_null_test(Oid type, bool is_null)
{
	if (type_is_rowtype(type))
		return is_null ? " IS NOT DISTINCT FROM NULL" : " IS DISTINCT FROM NULL";
	return is_null ? " IS NULL" : " IS NOT NULL";
}

static const char *
null_test(DedupColumn *col, bool is_null)
{
	return sql_null_test(col->type, is_null);
}

/* "(r.a IS NULL OR r.b IS NULL)" */
char *
sql_any_key_null(DedupTarget *t, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	for (int i = 0; i < t->nkeys; i++)
		appendStringInfo(&buf, "%s%s.%s%s", i > 0 ? " OR " : "", alias, t->keys[i].quoted,
						 null_test(&t->keys[i], true));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/*
 * The rows that take part, alias r: the filter (if with_filter) and, when
 * NULLs are distinct, no NULL in a key column (such a row is never a
 * duplicate).
 */
char *
sql_rows_where(DedupTarget *t, bool with_filter)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "true");
	if (with_filter && t->filter_r)
		appendStringInfo(&buf, " AND %s", t->filter_r);
	if (t->nulls_distinct)
		for (int i = 0; i < t->nkeys; i++)
			appendStringInfo(&buf, " AND r.%s%s", t->keys[i].quoted, null_test(&t->keys[i], false));
	return buf.data;
}

/* a.k = b.k for every key column, NULL-safe when NULLs are not distinct */
char *
sql_keys_match(DedupTarget *t, const char *a, const char *b)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < t->nkeys; i++)
	{
		const char *c = t->keys[i].quoted;

		if (i > 0)
			appendStringInfoString(&buf, " AND ");
		if (t->nulls_distinct)
			appendStringInfo(&buf, "%s.%s %s %s.%s", a, c, t->keys[i].eq_sql, b, c);
		else
			appendStringInfo(&buf, "(%s.%s %s %s.%s OR (%s.%s%s AND %s.%s%s))",
							 a, c, t->keys[i].eq_sql, b, c, a, c, null_test(&t->keys[i], true),
							 b, c, null_test(&t->keys[i], true));
	}
	return buf.data;
}

/* a.pk1, a.pk2, or a.ctid without a primary key */
char *
sql_pk_list(DedupTarget *t, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (t->npk == 0)
		appendStringInfo(&buf, "%s.ctid", alias);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, "%s%s.%s", i > 0 ? ", " : "", alias, t->pk[i].quoted);
	return buf.data;
}

/* a.pk = b.pk for every primary-key column */
char *
sql_pk_match(DedupTarget *t, const char *a, const char *b)
{
	StringInfoData buf;

	Assert(t->npk > 0);
	initStringInfo(&buf);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, "%s%s.%s %s %s.%s", i > 0 ? " AND " : "",
						 a, t->pk[i].quoted, t->pk[i].eq_sql, b, t->pk[i].quoted);
	return buf.data;
}

/*
 * One pass over the table that numbers the rows of every key group in keep
 * order: dedup_rn = 1 is the survivor, every other row is a loser.  The
 * window shares one sort with any other window over the same partition.
 */
static char *
ranked(DedupTarget *t, const char *extra_cols, const char *from)
{
	return psprintf("SELECT r.ctid AS dedup_ctid, pg_catalog.row_number() OVER dedup_w AS dedup_rn%s"
					" FROM %s WHERE %s"
					" WINDOW dedup_w AS (PARTITION BY %s ORDER BY %s)",
					extra_cols ? extra_cols : "", from, sql_rows_where(t, true),
					sql_partition_list(t, "r"), t->order_r);
}

char *
sql_ranked(DedupTarget *t, const char *extra_cols)
{
	return ranked(t, extra_cols, psprintf("ONLY %s r", t->qualname));
}

/*
 * sql_ranked for the passes that need only the rows of duplicate groups:
 * with t->candidates_fn, the window sorts only the rows whose key hash
 * repeats (candidates.c), fetched by ctid.  Their groups are whole, so the
 * numbering and first_value() are those of sql_ranked.
 */
char *
sql_ranked_dups(DedupTarget *t, const char *extra_cols)
{
	StringInfoData from;

	if (t->candidates_fn == NULL)
		return sql_ranked(t, extra_cols);
	initStringInfo(&from);
	appendStringInfo(&from, "%s(%s::pg_catalog.regclass, ARRAY[", t->candidates_fn,
					 sql_literal(t->qualname));
	for (int i = 0; i < t->nkeys; i++)
		appendStringInfo(&from, "%s%s", i > 0 ? ", " : "", sql_literal(t->keys[i].name));
	appendStringInfo(&from, "]::pg_catalog.text[], %s) c(dedup_cand)"
					 " JOIN ONLY %s r ON r.ctid OPERATOR(pg_catalog.=) c.dedup_cand",
					 t->nulls_distinct ? "true" : "false", t->qualname);
	return ranked(t, extra_cols, from.data);
}

/*
 * The column that decides 'first'/'last' when min()/max() can pick the
 * survivor of a group: a one-column primary key of a type with those
 * aggregates, or the ctid.  NULL when the window pass is needed, or better:
 * with many groups (few duplicates) one sort beats an aggregate that spills
 * followed by a join.
 */
const char *
sql_keep_column(DedupTarget *t)
{
	if (t->keep_extreme == 0 || !t->nulls_distinct || !t->few_groups)
		return NULL;
	if (t->npk == 0)
		return "r.ctid";
	if (t->npk == 1)
		switch (t->pk[0].type)
		{
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case NUMERICOID:
			case TEXTOID:
			case DATEOID:
			case TIMESTAMPOID:
			case TIMESTAMPTZOID:
				return psprintf("r.%s", t->pk[0].quoted);
		}
	return NULL;
}

/*
 * CTEs for WITH that give the losers as dedup_l(dedup_ctid).  Keeping the
 * first or last row by primary key needs no ordering inside a group: one
 * aggregate over the key (which the planner may hash: with few groups it is
 * as cheap as a GROUP BY gets) finds each group's survivor, and one join
 * finds the other rows.  Any other keep numbers the rows of each group in a
 * window (a sort over the key).
 */
char *
sql_losers(DedupTarget *t)
{
	const char *col = sql_keep_column(t);

	if (col == NULL)
		return psprintf("dedup_l AS (SELECT s.dedup_ctid, s.dedup_rn FROM (%s) s"
						" WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1)", sql_ranked_dups(t, NULL));
	return psprintf("dedup_g AS (%s),"
					" dedup_l AS (SELECT r.ctid AS dedup_ctid FROM ONLY %s r JOIN dedup_g g ON %s"
					" WHERE %s AND %s OPERATOR(pg_catalog.<>) g.dedup_keep)",
					sql_group_keep(t), t->qualname, sql_keys_match(t, "r", "g"),
					sql_rows_where(t, true), col);
}

/*
 * With sql_keep_column: one row per duplicate group with its key columns,
 * its survivor's keep column (dedup_keep) and its size (dedup_n).
 */
char *
sql_group_keep(DedupTarget *t)
{
	return psprintf("SELECT %s, pg_catalog.%s(%s) AS dedup_keep, pg_catalog.count(*) AS dedup_n"
					" FROM ONLY %s r WHERE %s GROUP BY %s"
					" HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1",
					sql_key_list(t, "r"), t->keep_extreme == 'l' ? "max" : "min",
					sql_keep_column(t), t->qualname, sql_rows_where(t, true),
					sql_key_list(t, "r"));
}

/* with sql_losers: the number of duplicate groups */
char *
sql_loser_groups(DedupTarget *t)
{
	if (sql_keep_column(t) == NULL)
		return pstrdup("(SELECT pg_catalog.count(*) FROM dedup_l l WHERE l.dedup_rn OPERATOR(pg_catalog.=) 2)");
	return pstrdup("(SELECT pg_catalog.count(*) FROM dedup_g)");
}

/* the extra columns sql_ranked needs for sql_rename_ctes */
char *
sql_rename_cols(DedupTarget *t)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, ", r.%s::pg_catalog.text AS dedup_val, pg_catalog.concat_ws('-'",
					 t->keys[t->rename_key].quoted);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, ", r.%s", t->pk[i].quoted);
	appendStringInfoString(&buf, ") AS dedup_suffix");
	return buf.data;
}

/*
 * CTEs (for WITH RECURSIVE) giving the new value of every renamed row:
 * dedup_f(dedup_ctid, dedup_rn, dedup_cand).  source names a relation of
 * losers with the columns of sql_rename_cols.  The candidate is
 * value || '-' || pk; while some row of the table already has it, another
 * '-' || pk is appended.  Preview and dedup share this text, so the preview
 * shows exactly the values a rename writes.
 */
char *
sql_rename_ctes(DedupTarget *t, const char *source)
{
	DedupColumn *key = &t->keys[t->rename_key];
	Oid			left,
				right;

	/*
	 * "taken" as the key compares, not as text: under citext's equality
	 * 'ABC-2' is taken by 'abc-2'
	 */
	op_input_types(key->eq_opr, &left, &right);

	return psprintf("dedup_c(dedup_ctid, dedup_rn, dedup_suffix, dedup_cand, dedup_depth) AS ("
					" SELECT s.dedup_ctid, s.dedup_rn, s.dedup_suffix,"
					" s.dedup_val OPERATOR(pg_catalog.||) '-'::pg_catalog.text OPERATOR(pg_catalog.||) s.dedup_suffix,"
					" 0 FROM %s s"
					" UNION ALL"
					" SELECT c.dedup_ctid, c.dedup_rn, c.dedup_suffix,"
					" c.dedup_cand OPERATOR(pg_catalog.||) '-'::pg_catalog.text OPERATOR(pg_catalog.||) c.dedup_suffix,"
					" c.dedup_depth OPERATOR(pg_catalog.+) 1 FROM dedup_c c"
					" WHERE EXISTS (SELECT FROM ONLY %s x"
					" WHERE x.%s %s c.dedup_cand::%s)),"
					" dedup_f AS (SELECT DISTINCT ON (c.dedup_ctid) c.dedup_ctid, c.dedup_rn, c.dedup_cand"
					" FROM dedup_c c ORDER BY c.dedup_ctid, c.dedup_depth DESC)",
					source, t->qualname, key->quoted, key->eq_sql, sql_type(right));
}

/*
 * The CTEs that rename the rows listed in CTE src (their ctid in column
 * ctidcol, their new key in dedup_cand): dedup_a archives their original
 * versions (with archive), dedup_u updates them, returning dedup_same.
 */
char *
sql_rename_apply(DedupTarget *t, const char *src, const char *ctidcol,
				 const char *archive, int64 job_id)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (archive)
		appendStringInfo(&buf, "dedup_a AS (INSERT INTO %s SELECT r.*, %lld, 'rename', x.dedup_cand, NULL%s"
						 " FROM ONLY %s r JOIN %s x ON r.ctid OPERATOR(pg_catalog.=) x.%s RETURNING 1), ",
						 archive, (long long) job_id, archive_xact_value(archive), t->qualname, src, ctidcol);
	/* dedup_same: the row holds the value written (no trigger changed it) */
	appendStringInfo(&buf, "dedup_u AS (UPDATE ONLY %s r SET %s = x.dedup_cand FROM %s x"
					 " WHERE r.ctid OPERATOR(pg_catalog.=) x.%s"
					 " RETURNING r.%s::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) x.dedup_cand"
					 " AS dedup_same)",
					 t->qualname, t->keys[t->rename_key].quoted, src, ctidcol,
					 t->keys[t->rename_key].quoted);
	return buf.data;
}
