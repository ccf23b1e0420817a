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
 * re-queues the jobs whose worker the previous server run lost.  When all
 * max_worker_processes slots are taken at a COMMIT, the database is noted
 * in shared memory, and the launcher starts its worker once a slot is free.
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
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

PGDLLEXPORT void dedup_launcher_main(Datum arg);
static List *connectable_databases(void);

static int	launch_pending = 0;	/* jobs queued or resumed by this transaction */
static bool callback_registered = false;

/* the databases whose jobs wait for a free slot; preloaded only */
#define WAITING_DATABASES 64
typedef struct LaunchShared
{
	slock_t		mutex;
	Latch	   *launcher_latch; /* NULL before the launcher's first start */
	TimestampTz shmem_started;	/* this memory's: a server start, a crash-restart */
	TimestampTz launcher_started;	/* the launcher's since, or 0 */
	bool		resumed;		/* every database had its resuming worker */
	int			nwaiting;
	Oid			waiting[WAITING_DATABASES];
} LaunchShared;

static LaunchShared *launch_shared = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
#ifdef DEDUP_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif

static void
launch_shmem_request(void)
{
#ifdef DEDUP_HAVE_SHMEM_REQUEST_HOOK
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(MAXALIGN(sizeof(LaunchShared)));
}

static void
launch_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	launch_shared = ShmemInitStruct("dedup_ext launcher", sizeof(LaunchShared), &found);
	if (!found)
	{
		memset(launch_shared, 0, sizeof(LaunchShared));
		SpinLockInit(&launch_shared->mutex);
		launch_shared->shmem_started = GetCurrentTimestamp();
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Note that database dbid waits for a worker, and wake the launcher: false
 * when that cannot be (not preloaded, or too many databases wait).
 */
static bool
launch_later(Oid dbid)
{
	bool		noted = false;
	Latch	   *latch;

	if (launch_shared == NULL)
		return false;
	SpinLockAcquire(&launch_shared->mutex);
	for (int i = 0; i < launch_shared->nwaiting && !noted; i++)
		noted = launch_shared->waiting[i] == dbid;
	if (!noted && launch_shared->nwaiting < WAITING_DATABASES)
	{
		launch_shared->waiting[launch_shared->nwaiting++] = dbid;
		noted = true;
	}
	latch = launch_shared->launcher_latch;
	SpinLockRelease(&launch_shared->mutex);
	if (latch)
		SetLatch(latch);
	return noted;
}

/*
 * Start a worker for a database.  mode, its bgw_extra[0]: 'n' for a
 * submission's worker; 'q' for the launcher's, which starts more for the
 * database's queued jobs, up to dedup_ext.max_workers; 'r' for the
 * launcher's after a server start, which also re-queues first the jobs that
 * lost their worker.  When no background worker slot is free it returns
 * false.
 */
static bool
launch_worker(Oid dbid, char mode)
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
	worker.bgw_extra[0] = mode;
	worker.bgw_notify_pid = 0;
	return RegisterDynamicBackgroundWorker(&worker, &handle);
}

/*
 * Start up to n more workers for the current database (at least one, which
 * leaves at once when dedup_ext.max_workers is 0); returns false when a
 * background worker slot was missing, after noting the database for the
 * launcher (launch_later) if it can.  *noted: whether it could.
 */
static bool
launch_workers_noted(int n, bool *noted)
{
	n = Max(1, Min(n, dedup_max_workers));
	for (int i = 0; i < n; i++)
		if (!launch_worker(MyDatabaseId, 'n'))
		{
			*noted = launch_later(MyDatabaseId);
			return false;
		}
	return true;
}

/* a worker's, after a restart: the jobs queued then run side by side */
void
launch_workers(int n)
{
	bool		noted;

	(void) launch_workers_noted(n, &noted);
}

/*
 * After the COMMIT of a transaction that queued or resumed n jobs: as many
 * workers, up to dedup_ext.max_workers, so that they run side by side.
 */
static void
launch_submitted(int n)
{
	bool		noted = false;

	if (launch_workers_noted(n, &noted))
		return;
	if (noted)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a dedup_ext background worker yet"),
				 errdetail("All max_worker_processes background worker slots are in use."),
				 errhint("The job stays queued until a slot is free; the launcher then starts a worker for it.")));
	else
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a dedup_ext background worker"),
				 errdetail("All max_worker_processes background worker slots are in use."),
				 launch_shared ?
				 errhint("The job stays queued; dedup_resume(job_id) starts a worker for it later.") :
				 errhint("The job stays queued; dedup_resume(job_id) starts a worker for it later (with dedup_ext in shared_preload_libraries, the launcher does once a slot is free).")));
}

static void
launch_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (launch_pending > 0)
			{
				int			n = launch_pending;

				launch_pending = 0;
				launch_submitted(n);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			launch_pending = 0;
			break;
		case XACT_EVENT_PRE_PREPARE:

			/*
			 * COMMIT PREPARED, in whatever session runs it, has no callback
			 * that could start the job's worker: it would stay queued.
			 */
			if (launch_pending > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that submitted or resumed a background job"),
						 errdetail("A job's worker starts when the transaction that queued it commits; COMMIT PREPARED starts none."),
						 errhint("Submit or resume the job in a transaction that commits directly.")));
			break;
		default:
			break;
	}
}

/* one more job for the workers that start when the current transaction commits */
void
launch_at_commit(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(launch_xact_callback, NULL);
		callback_registered = true;
	}
	launch_pending++;
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

#ifdef DEDUP_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = launch_shmem_request;
#else
	launch_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = launch_shmem_startup;
}

/*
 * Start a worker for each database noted by launch_later; those that still
 * find no free slot stay noted.  Returns whether any is left.
 */
static bool
launch_waiting(void)
{
	Oid			dbs[WAITING_DATABASES];
	int			n;
	bool		left;

	SpinLockAcquire(&launch_shared->mutex);
	n = launch_shared->nwaiting;
	memcpy(dbs, launch_shared->waiting, n * sizeof(Oid));
	launch_shared->nwaiting = 0;
	SpinLockRelease(&launch_shared->mutex);
	for (int i = 0; i < n; i++)
		if (!launch_worker(dbs[i], 'q'))
			(void) launch_later(dbs[i]);
	SpinLockAcquire(&launch_shared->mutex);
	left = launch_shared->nwaiting > 0;
	SpinLockRelease(&launch_shared->mutex);
	return left;
}

/*
 * When the launcher last started, or, while it is yet to start, when the
 * server did (or restarted after a crash): a job interrupted before then is
 * resumed by the worker the launcher starts for the job's database.  0
 * without a launcher (not preloaded).
 */
TimestampTz
launcher_started_at(void)
{
	TimestampTz started;

	if (launch_shared == NULL)
		return 0;
	SpinLockAcquire(&launch_shared->mutex);
	started = launch_shared->launcher_started != 0 ?
		launch_shared->launcher_started : launch_shared->shmem_started;
	SpinLockRelease(&launch_shared->mutex);
	return started;
}

/* the launcher's latch is its process's: no longer to be set once it exits */
static void
forget_launcher_latch(int code, Datum arg)
{
	SpinLockAcquire(&launch_shared->mutex);
	launch_shared->launcher_latch = NULL;
	SpinLockRelease(&launch_shared->mutex);
}

/*
 * The launcher connects to no database (it reads only the shared catalog
 * pg_database), starts a resuming worker for every database that accepts
 * connections, then sleeps until shutdown, so that it is started again after
 * a crash-restart (and, stopped by pg_terminate_backend, 5 s later).  A
 * cluster may have more databases than free background worker slots: the
 * databases whose worker could not start are tried again
 * every second, as the workers before them finish; so are the databases
 * whose submissions found no free slot (launch_later wakes it), and, when a
 * reload raises dedup_ext.max_workers, every database.
 */
void
dedup_launcher_main(Datum arg)
{
	List	   *dbs;
	ListCell   *lc;
	TimestampTz started;
	bool		resumed;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	started = GetCurrentTimestamp();
	SpinLockAcquire(&launch_shared->mutex);
	launch_shared->launcher_latch = MyLatch;
	if (launch_shared->launcher_started == 0)
		launch_shared->launcher_started = started;
	resumed = launch_shared->resumed;
	SpinLockRelease(&launch_shared->mutex);
	on_shmem_exit(forget_launcher_latch, (Datum) 0);

	/*
	 * Started again in the same server run (pg_terminate_backend stopped
	 * it): once every database has had its resuming worker, none gets
	 * another; a pass cut short is made again, whole.  Either way the jobs
	 * interrupted since the first start wait for dedup_resume, as they would
	 * have: requeue_lost re-queues only jobs last written before it.
	 */
	dbs = resumed ? NIL : connectable_databases();
	while (!ShutdownRequestPending)
	{
		List	   *left = NIL;
		bool		waiting;

		foreach(lc, dbs)
			if (!launch_worker(lfirst_oid(lc), 'r'))
				left = lappend_oid(left, lfirst_oid(lc));
		list_free(dbs);
		dbs = left;
		if (dbs == NIL && !resumed)
		{
			SpinLockAcquire(&launch_shared->mutex);
			launch_shared->resumed = resumed = true;
			SpinLockRelease(&launch_shared->mutex);
		}
		waiting = launch_waiting();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (dbs || waiting ? WL_TIMEOUT : 0),
						 dbs || waiting ? 1000L : -1L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		/* barriers (DROP DATABASE waits for every process to absorb one) */
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			int			before = dedup_max_workers;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);

			/*
			 * More workers allowed: the jobs queued beyond the old number, in
			 * any database, get theirs (a worker finds none, or leaves).
			 */
			if (dedup_max_workers > before)
			{
				List	   *all = connectable_databases();

				foreach(lc, all)
					(void) launch_later(lfirst_oid(lc));
				list_free(all);
			}
		}
	}
	/*
	 * Not 0, which would unregister it: the postmaster starts it again
	 * (bgw_restart_time) unless the server is shutting down
	 */
	proc_exit(1);
}

/* the databases that accept connections, in TopMemoryContext */
static List *
connectable_databases(void)
{
	List	   *dbs = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		/* outlives the transaction */
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
	return dbs;
}
