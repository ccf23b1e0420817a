/*
 * guard.c
 *		add_unique in the background: the invalid unique indexes that keep
 *		writers from adding duplicates while the job builds its index again.
 *
 * CREATE UNIQUE INDEX CONCURRENTLY fails when the table holds a duplicate
 * at the end of its build, such as one a writer inserted after the job's
 * last pass: a writer that keeps inserting duplicates makes every build
 * fail.  A build that fails in its second table scan (validate_index) leaves
 * an index that was ready already: every insert since checks it, and keeps
 * checking it, invalid as it is, for as long as it stays.  The job keeps
 * such an index as a guard, renamed dedup_guard_<job>_<n>, instead of
 * dropping it: its next pass removes the duplicates written before the
 * guard was ready, and no insert adds one since, except of a key whose live
 * rows the guard all missed: rows of transactions that wrote during its
 * build and ended before it was ready (a survivor among them whose losers
 * the pass removed, say).  A second guard has them all (its build began
 * after they ended), so a job keeps two at most.  The job's guards are
 * dropped once its index is built, when it stops without it (cancel, pause,
 * failure), and by its rollback; while they stay, a writer's duplicate is
 * refused with unique_violation naming a guard.
 */
#include "dedup_ext.h"

#include "catalog/index.h"
#include "catalog/pg_index.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#define MAX_GUARDS 2

/*
 * The job's guards on table relid, schema-qualified and quoted: its invalid
 * indexes of the job's guard names (no index of the user's is invalid and
 * named so by chance).  The list is the caller's memory context's: SPI
 * returns in its own, which SPI_finish frees, and a worker's caller drops
 * the guards after that, one transaction each.
 */
static List *
guard_list(int64 job_id, Oid relid)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *guards = NIL;

	spi_exec_count(psprintf("SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname)"
							" FROM pg_catalog.pg_index i"
							" JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid"
							" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
							" WHERE i.indrelid OPERATOR(pg_catalog.=) %u AND NOT i.indisvalid"
							" AND c.relname OPERATOR(pg_catalog.~) '^dedup_guard_%lld_[0-9]+$'"
							" ORDER BY c.relname",
							relid, (long long) job_id),
				   SPI_OK_SELECT);
	MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
		guards = lappend(guards, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return guards;
}

/* index idx's flags (false: it is no index) */
bool
index_flags(Oid idx, bool *ready, bool *valid)
{
	HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(idx));

	if (!HeapTupleIsValid(tup))
		return false;
	*ready = ((Form_pg_index) GETSTRUCT(tup))->indisready;
	*valid = ((Form_pg_index) GETSTRUCT(tup))->indisvalid;
	ReleaseSysCache(tup);
	return true;
}

/*
 * A step (bg_xact): after a build that found a duplicate, keep its index
 * as a guard (*kept) if it is ready and the job has fewer than two; the
 * caller drops it otherwise.  Renaming an index takes a SHARE UPDATE
 * EXCLUSIVE lock on the index only, which writers do not wait for.
 */
void
guard_keep_step(BgJob *job, void *arg)
{
	bool	   *kept = (bool *) arg;
	Oid			nsp = get_rel_namespace(job->relid);
	Oid			idx = get_relname_relid(job->index_name, nsp);
	bool		ready;
	bool		valid;
	char	   *name;

	*kept = false;
	if (!index_flags(idx, &ready, &valid) || !ready || valid ||
		list_length(guard_list(job->job_id, job->relid)) >= MAX_GUARDS)
		return;
	for (int n = 1;; n++)
	{
		name = psprintf("dedup_guard_%lld_%d", (long long) job->job_id, n);
		if (!OidIsValid(get_relname_relid(name, nsp)))
			break;
	}
	spi_exec_count(psprintf("ALTER INDEX %s RENAME TO %s",
							quote_qualified_identifier(job->nspname, job->index_name),
							quote_identifier(name)),
				   SPI_OK_UTILITY);
	ereport(LOG,
			(errmsg("dedup_ext job %lld: its unique index build found a duplicate; the index stays as %s, invalid, to refuse new duplicates while the job removes the others",
					(long long) job->job_id, quote_qualified_identifier(job->nspname, name))));
	*kept = true;
}

/* the job's guards, and the index of its current build if that is invalid */
static void
list_step(BgJob *job, void *arg)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);
	List	   *guards = guard_list(job->job_id, job->relid);
	bool		ready;
	bool		valid;

	if (job->index_name &&
		index_flags(get_relname_relid(job->index_name, get_rel_namespace(job->relid)), &ready, &valid) &&
		!valid)
		guards = lappend(guards, quote_qualified_identifier(job->nspname, job->index_name));
	*(List **) arg = guards;
	MemoryContextSwitchTo(oldcxt);
}

/*
 * May the job have guards?  A dedup with add_unique, or one whose
 * parameters are not read yet (a job resumed after a crash)
 */
bool
bg_may_have_guards(BgJob *job)
{
	return (job->kind == NULL || strcmp(job->kind, "dedup") == 0) && (job->add_unique || job->t == NULL);
}

/*
 * Drop the job's guards (and the invalid index of a build it stopped in),
 * each with DROP INDEX CONCURRENTLY, which waits for the transactions that
 * hold a lock on the table but blocks none.
 */
void
bg_drop_guards(BgJob *job)
{
	List	   *guards = NIL;
	ListCell   *lc;

	bg_xact_always(job, list_step, &guards);
	foreach(lc, guards)
		bg_toplevel(job, psprintf("DROP INDEX CONCURRENTLY IF EXISTS %s", (char *) lfirst(lc)));
}

/*
 * bg_drop_guards for a job that failed (whatever its parameters say: a job
 * resumed after a crash may fail before it has read them): a guard it
 * cannot drop (its row or table gone) is left for dedup_rollback, with a
 * warning, rather than hide the job's own error.
 */
void
bg_drop_guards_quietly(BgJob *job)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		bg_drop_guards(job);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		bg_abort();
		MemoryContextSwitchTo(cxt);
		ereport(WARNING,
				(errmsg("dedup_ext job %lld: could not drop the invalid indexes that refuse new duplicates while it runs",
						(long long) job->job_id),
				 errdetail("%s", edata->message),
				 errhint("dedup_rollback of the job drops them, as does DROP INDEX (indexes dedup_guard_%lld_*).",
						 (long long) job->job_id)));
	}
	PG_END_TRY();
}

/*
 * Drop, in the caller's transaction (DROP INDEX: an ACCESS EXCLUSIVE lock
 * on the table until it ends), the guards of a job no worker runs, and the
 * invalid index a build it was in the middle of left (unique_index, by its
 * recorded qualified name): dedup_cancel and dedup_rollback.
 */
void
guards_drop(int64 job_id, Oid relid, const char *unique_index)
{
	List	   *guards = guard_list(job_id, relid);
	ListCell   *lc;

	if (unique_index)
	{
		Oid			idx = dedup_relid_by_name(unique_index);
		bool		ready;
		bool		valid;

		if (index_flags(idx, &ready, &valid) && !valid && IndexGetRelation(idx, true) == relid)
			guards = lappend(guards, quote_qualified_identifier(get_namespace_name(get_rel_namespace(idx)),
																get_rel_name(idx)));
	}
	foreach(lc, guards)
		spi_exec_count(psprintf("DROP INDEX IF EXISTS %s", (char *) lfirst(lc)), SPI_OK_UTILITY);
}
