/*
 * audit.c
 *		The read-only functions: dedup_audit, dedup_groups, dedup_preview.
 *
 * Each is one statement over the table: audit and groups are one hash (or
 * sorted) aggregate over the key; preview is the same window pass that
 * dedup_table uses to pick survivors, so what it shows is what a dedup does.
 */
#include "dedup_ext.h"

#include "executor/spi.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(dedup_audit);
PG_FUNCTION_INFO_V1(dedup_groups);
PG_FUNCTION_INFO_V1(dedup_preview);

static DedupTarget *
open_for_looking(FunctionCallInfo fcinfo, int filter_arg, int nulls_arg)
{
	dedup_require_arg(fcinfo, 0, "rel");
	dedup_require_arg(fcinfo, 1, "key");
	dedup_require_arg(fcinfo, nulls_arg, "nulls_distinct");
	return dedup_target_open(PG_GETARG_OID(0), PG_GETARG_ARRAYTYPE_P(1),
							 PG_ARGISNULL(filter_arg) ? NULL : PG_GETARG_TEXT_PP(filter_arg),
							 PG_GETARG_BOOL(nulls_arg), false, AccessShareLock);
}

static int32
get_limit(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	int32		limit;

	if (PG_ARGISNULL(argno))
		return -1;				/* no limit */
	limit = PG_GETARG_INT32(argno);
	if (limit < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" must not be negative", argname)));
	return limit;
}

static const char *
limit_sql(int32 limit)
{
	return limit < 0 ? "" : psprintf(" LIMIT %d", limit);
}

/*
 * One aggregate over the key groups.  With NULLs distinct, a row with a NULL
 * key is a group of its own: it counts as a distinct key, never as a
 * duplicate; so distinct_keys + duplicate_rows = total_rows always.
 */
Datum
dedup_audit(PG_FUNCTION_ARGS)
{
	DedupTarget *t = open_for_looking(fcinfo, 2, 3);
	const char *nul_alone = t->nulls_distinct ? "g.dedup_nul" : "false";
	char	   *sql;

	sql = psprintf("SELECT"
				   " COALESCE(pg_catalog.sum(g.dedup_n), 0)::pg_catalog.int8,"
				   " (pg_catalog.count(*) FILTER (WHERE NOT %s) OPERATOR(pg_catalog.+)"
				   "  COALESCE(pg_catalog.sum(g.dedup_n) FILTER (WHERE %s), 0))::pg_catalog.int8,"
				   " pg_catalog.count(*) FILTER (WHERE NOT %s AND g.dedup_n OPERATOR(pg_catalog.>) 1),"
				   " COALESCE(pg_catalog.sum(g.dedup_n OPERATOR(pg_catalog.-) 1) FILTER (WHERE NOT %s), 0)::pg_catalog.int8,"
				   " COALESCE(pg_catalog.max(CASE WHEN %s THEN 1 ELSE g.dedup_n END), 0)::pg_catalog.int8,"
				   " COALESCE(pg_catalog.sum(g.dedup_n) FILTER (WHERE g.dedup_nul), 0)::pg_catalog.int8"
				   " FROM (SELECT pg_catalog.count(*) AS dedup_n, %s AS dedup_nul"
				   " FROM ONLY %s r WHERE %s GROUP BY %s) g",
				   nul_alone, nul_alone, nul_alone, nul_alone, nul_alone,
				   sql_any_key_null(t, "r"), t->qualname,
				   t->filter_r ? t->filter_r : "true", sql_key_list(t, "r"));
	SPI_connect();
	spi_query_to_srf(fcinfo, sql);
	SPI_finish();
	return (Datum) 0;
}

/* the largest duplicate groups, largest first, then by key */
Datum
dedup_groups(PG_FUNCTION_ARGS)
{
	DedupTarget *t = open_for_looking(fcinfo, 2, 3);
	int32		limit = get_limit(fcinfo, 4, "max_groups");
	char	   *sql;

	sql = psprintf("SELECT %s AS key_values, pg_catalog.count(*) AS group_rows"
				   " FROM ONLY %s r WHERE %s GROUP BY %s"
				   " HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1"
				   " ORDER BY 2 DESC, 1%s",
				   sql_key_json(t, "r"), t->qualname, sql_rows_where(t, true),
				   sql_key_list(t, "r"), limit_sql(limit));
	SPI_connect();
	spi_query_to_srf(fcinfo, sql);
	SPI_finish();
	return (Datum) 0;
}

/*
 * Every row of every duplicate group with what a dedup would do to it.
 * Groups are numbered in the order of their survivor's key values (under a
 * nondeterministic collation the rows of a group may spell the key
 * differently); rows within a group in keep order.
 */
Datum
dedup_preview(PG_FUNCTION_ARGS)
{
	DedupTarget *t;
	DedupAction action;
	int32		limit;
	StringInfoData sql;
	const char *row_id;
	const char *new_value;

	dedup_require_arg(fcinfo, 2, "keep");
	dedup_require_arg(fcinfo, 3, "action");
	t = open_for_looking(fcinfo, 4, 5);
	dedup_target_require_sort(t, "dedup_preview");
	action = dedup_parse_action(text_to_cstring(PG_GETARG_TEXT_PP(3)));
	dedup_target_set_keep(t, text_to_cstring(PG_GETARG_TEXT_PP(2)));
	if (action == DEDUP_ACTION_RENAME)
		dedup_target_set_rename(t);
	limit = get_limit(fcinfo, 6, "max_rows");
	row_id = sql_row_id(t, "r");

	SPI_connect();
	/* what dedup_table would refuse, the preview refuses too */
	if (action == DEDUP_ACTION_MERGE)
		(void) merge_plan(t, false, false);
	if (action == DEDUP_ACTION_RENAME && !t->nulls_distinct)
	{
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM (%s) s"
								" WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1 AND s.dedup_val IS NULL",
								sql_ranked(t, sql_rename_cols(t))),
					   SPI_OK_SELECT);
		rename_refusals(t, spi_get_int64(0, 1), NULL);
	}

	initStringInfo(&sql);
	appendStringInfo(&sql, "WITH RECURSIVE dedup_s AS (%s), ",
					 sql_ranked(t, psprintf(", %s AS dedup_row_id, %s AS dedup_kv,"
											" pg_catalog.count(*) OVER (PARTITION BY %s) AS dedup_n,"
											" pg_catalog.first_value(%s) OVER dedup_w AS dedup_survivor,"
											" pg_catalog.first_value(%s) OVER dedup_w AS dedup_group_kv%s",
											row_id, sql_key_json(t, "r"), sql_partition_list(t, "r"),
											row_id, sql_key_json(t, "r"),
											action == DEDUP_ACTION_RENAME ? sql_rename_cols(t) : "")));
	if (action == DEDUP_ACTION_RENAME)
	{
		appendStringInfoString(&sql, "dedup_l AS (SELECT * FROM dedup_s s"
							   " WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1), ");
		appendStringInfo(&sql, "%s, ", sql_rename_ctes(t, "dedup_l"));
		new_value = "f.dedup_cand";
	}
	else if (action == DEDUP_ACTION_MERGE)
		new_value = "g.dedup_survivor::pg_catalog.text";
	else
		new_value = "NULL::pg_catalog.text";

	appendStringInfo(&sql,
					 "dedup_g AS (SELECT s.*, pg_catalog.dense_rank() OVER (ORDER BY s.dedup_group_kv, s.dedup_survivor) AS dedup_group_no"
					 " FROM dedup_s s WHERE s.dedup_n OPERATOR(pg_catalog.>) 1)"
					 " SELECT g.dedup_group_no, g.dedup_row_id,"
					 " CASE WHEN g.dedup_rn OPERATOR(pg_catalog.=) 1 THEN 'keep' ELSE %s END::pg_catalog.text,"
					 " g.dedup_kv,"
					 " CASE WHEN g.dedup_rn OPERATOR(pg_catalog.=) 1 THEN NULL ELSE %s END"
					 " FROM dedup_g g%s"
					 " ORDER BY g.dedup_group_no, g.dedup_rn%s",
					 sql_literal(dedup_action_name(action)), new_value,
					 action == DEDUP_ACTION_RENAME ?
					 " LEFT JOIN dedup_f f ON f.dedup_ctid OPERATOR(pg_catalog.=) g.dedup_ctid" : "",
					 limit_sql(limit));
	spi_query_to_srf(fcinfo, sql.data);
	SPI_finish();
	return (Datum) 0;
}
