/*
 * spi.c
 *		Running generated statements through SPI.
 *
 * Statements are executed one at a time with SPI_execute (a single statement
 * each: generated text never contains a ';').  Results that may be large are
 * read through a cursor into the function's tuplestore, which spills to disk.
 */
#include "dedup_ext.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
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

/* Execute one statement; expected is the SPI_OK_* code; returns rows processed. */
int64
spi_exec_count(const char *sql, int expected)
{
	int			ret = SPI_execute(sql, false, 0);

	if (ret != expected)
		elog(ERROR, "dedup_ext: unexpected SPI result %s for: %s",
			 SPI_result_code_string(ret), sql);
	return (int64) SPI_processed;
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
