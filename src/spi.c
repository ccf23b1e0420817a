/*
 * spi.c
 *		Running generated statements through SPI.
 *
 * Statements are executed one at a time with SPI_execute, or prepared and
 * then executed (a single statement each: generated text never contains a
 * ';').  Results that may be large are read through a cursor into the
 * function's tuplestore, which spills to disk.
 */
#include "dedup_ext.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/plancache.h"
#include "utils/tuplestore.h"

/*
 * A fresh name for a temporary table in this session ("pg_temp.dedup_<what>_<pid>_<n>"):
 * several jobs may run in one transaction, each with its own.
 */
char *
spi_temp_table_name(const char *what)
{
	static int	counter = 0;

	return psprintf("pg_temp.dedup_%s_%d_%d", what, MyProcPid, ++counter);
}

/* ret, what SPI returned for sql, must be expected; returns rows processed */
static int64
checked_count(int ret, int expected, const char *sql)
{
	if (ret != expected)
		elog(ERROR, "dedup_ext: unexpected SPI result %s for: %s",
			 SPI_result_code_string(ret), sql);
	return (int64) SPI_processed;
}

/* Execute one statement; expected is the SPI_OK_* code; returns rows processed. */
int64
spi_exec_count(const char *sql, int expected)
{
	return checked_count(SPI_execute(sql, false, 0), expected, sql);
}

/*
 * spi_exec_count, the statement planned without nested loops.  The setting
 * holds while the planner runs, not while the statement does, so that the
 * triggers and functions it fires plan their own statements as usual.  The
 * plan is the prepared statement's generic one (it has no parameters),
 * which SPI_execute_plan takes as it is (a plan never saved is not
 * invalidated).
 */
int64
spi_exec_count_no_nestloop(const char *sql, int expected)
{
	SPIPlanPtr	plan = SPI_prepare(sql, 0, NULL);
	CachedPlan *cplan;
	int			nest;
	int64		processed;

	if (plan == NULL)
		elog(ERROR, "dedup_ext: could not prepare (%s): %s",
			 SPI_result_code_string(SPI_result), sql);
	nest = NewGUCNestLevel();
	(void) set_config_option("enable_nestloop", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	cplan = SPI_plan_get_cached_plan(plan);
	AtEOXact_GUC(true, nest);
	if (cplan == NULL)
		elog(ERROR, "dedup_ext: could not plan: %s", sql);
	/* the plan source keeps the plan */
	ReleaseCachedPlan(cplan, NULL);
	processed = checked_count(SPI_execute_plan(plan, NULL, NULL, false, 0), expected, sql);
	SPI_freeplan(plan);
	return processed;
}

/* A bigint of the last SELECT's result; NULL reads as 0. */
int64
spi_get_int64(int row, int col)
{
	bool		isnull;
	Datum		d;

	if ((uint64) row >= SPI_processed)
		return 0;
	d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);
	return isnull ? 0 : DatumGetInt64(d);
}

/*
 * Return the rows of a query as the result of a set-returning function.  The
 * query's columns must have exactly the types of the function's result.
 */
void
spi_query_to_srf(FunctionCallInfo fcinfo, const char *sql)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SPIPlanPtr	plan;
	Portal		portal;
	int			natts;
	Datum	   *values;
	bool	   *nulls;

	InitMaterializedSRF(fcinfo, 0);
	natts = rsinfo->setDesc->natts;
	values = palloc(sizeof(Datum) * natts);
	nulls = palloc(sizeof(bool) * natts);

	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "dedup_ext: SPI_prepare failed (%s) for: %s",
			 SPI_result_code_string(SPI_result), sql);
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			heap_deform_tuple(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, values, nulls);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

/*
 * In PG_CATCH around a generated statement: an error with SQLSTATE code, or
 * code2 (0: none), and no hint of its own goes up with hint, and without the
 * generated statement as its context when drop_context; any other error goes
 * up as it is.  A class (ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION) as code
 * stands for every SQLSTATE of it.  cxt: the memory context of the caller
 * before PG_TRY.
 */
void
spi_rethrow_with_hint(MemoryContext cxt, int code, int code2, const char *hint, bool drop_context)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	if ((edata->sqlerrcode == code || (code2 != 0 && edata->sqlerrcode == code2) ||
		 (ERRCODE_IS_CATEGORY(code) && ERRCODE_TO_CATEGORY(edata->sqlerrcode) == code)) &&
		edata->hint == NULL)
	{
		FlushErrorState();
		edata->hint = pstrdup(hint);
		if (drop_context)
			edata->context = NULL;
		ReThrowError(edata);
	}
	PG_RE_THROW();
}
