/*
 * launcher.c
 *		Starting background workers: after a submitting transaction commits,
 *		and, when the library is preloaded, after every server start.
 *
 * A background job is a committed 'queued' row; a worker is what runs it.
 * Workers are dynamic background workers registered at COMMIT of the
 * transaction that queued (or resumed) a job, so a rolled-back submission
 * never starts anything, and they take queued jobs of their database until
 * none is left.  With shared_preload_libraries the launcher, a static
 * worker, starts one worker per database at server start; that worker
 * re-queues the jobs whose worker the previous server run lost.
 */
#include "dedup_ext.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

PGDLLEXPORT void dedup_launcher_main(Datum arg);

static bool launch_pending = false;
static bool callback_registered = false;

/*
 * Start a worker for a database.  resume: it re-queues the jobs of the
 * database that lost their worker first.  When no background worker slot is
 * free it returns false, and for a submission warns: the job stays queued.
 */
bool
launch_worker(Oid dbid, bool resume)
{
	BackgroundWorker worker = {0};
	BackgroundWorkerHandle *handle;

	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "dedup_ext", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "dedup_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "dedup_ext worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "dedup_ext worker");
	worker.bgw_main_arg = ObjectIdGetDatum(dbid);
	worker.bgw_extra[0] = resume ? 'r' : 'n';
	worker.bgw_notify_pid = 0;
	if (RegisterDynamicBackgroundWorker(&worker, &handle))
		return true;
	if (!resume)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a dedup_ext background worker"),
				 errdetail("All max_worker_processes background worker slots are in use."),
				 errhint("The job stays queued; dedup_resume(job_id) starts a worker for it later.")));
	return false;
}

static void
launch_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (launch_pending)
			{
				launch_pending = false;
				(void) launch_worker(MyDatabaseId, false);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared submission starts with the next worker of its database */
			launch_pending = false;
			break;
		default:
			break;
	}
}

/* a worker is to start when the current transaction commits */
void
launch_at_commit(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(launch_xact_callback, NULL);
		callback_registered = true;
	}
	launch_pending = true;
}

/* from _PG_init, when preloaded */
void
launcher_register(void)
{
	BackgroundWorker worker = {0};

	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	/* after a crash-restart (a killed worker), it starts again and resumes */
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "dedup_ext", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "dedup_launcher_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "dedup_ext launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "dedup_ext launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * The launcher connects to no database (it reads only the shared catalog
 * pg_database), starts a resuming worker for every database that accepts
 * connections, then sleeps until shutdown, so that it is started again after
 * a crash-restart.  A cluster may have more databases than free background
 * worker slots: the databases whose worker could not start are tried again
 * every second, as the workers before them finish.
 */
void
dedup_launcher_main(Datum arg)
{
	List	   *dbs = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	ListCell   *lc;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		/* outlives the transaction: the databases not started yet are retried */
		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

			dbs = lappend_oid(dbs, db->oid);
			MemoryContextSwitchTo(oldcxt);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();

	while (!ShutdownRequestPending)
	{
		List	   *left = NIL;

		foreach(lc, dbs)
			if (!launch_worker(lfirst_oid(lc), true))
				left = lappend_oid(left, lfirst_oid(lc));
		list_free(dbs);
		dbs = left;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (dbs ? WL_TIMEOUT : 0),
						 dbs ? 1000L : -1L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		/* barriers (DROP DATABASE waits for every process to absorb one) */
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	proc_exit(0);
}
