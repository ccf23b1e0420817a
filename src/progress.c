/*
 * progress.c
 *		Live progress of running jobs, in shared memory.
 *
 * A job's committed counters (dedup_job) are only as fresh as its last batch,
 * and a foreground job's row is not visible to other sessions at all until
 * its transaction commits.  When the library is preloaded, every running job
 * also owns a slot here, which it updates as it goes and which the
 * dedup_progress view reads.  Without preloading there is no shared memory:
 * the calls below do nothing, and dedup_progress shows committed counters.
 *
 * A foreground job's slot is released at the end of its transaction (commit
 * or abort); a background worker releases its slot when the job stops.
 */
#include "dedup_ext.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(dedup_progress_live);

#define PROGRESS_SLOTS 128

typedef struct ProgressSlot
{
	int64		job_id;			/* 0: free */
	int			pid;
	Oid			dbid;
	Oid			userid;
	Oid			relid;
	char		kind[16];
	char		phase[NAMEDATALEN];
	char		state[16];
	int64		rows_total;
	int64		rows_done;
	int64		rows_changed;
	int64		batches_done;
	TimestampTz started_at;		/* when the job first started */
	TimestampTz updated_at;
	TimestampTz run_started_at; /* when it started in this process */
	int64		rows_before_run;	/* rows_done by its earlier runs */
} ProgressSlot;

typedef struct ProgressShared
{
	LWLock	   *lock;
	ProgressSlot slots[PROGRESS_SLOTS];
} ProgressShared;

static ProgressShared *shared = NULL;
static ProgressSlot *my_slot = NULL;
static bool my_slot_foreground = false;
static SubTransactionId my_slot_subid;	/* where a foreground slot began */

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
#ifdef DEDUP_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif

static void
progress_shmem_request(void)
{
#ifdef DEDUP_HAVE_SHMEM_REQUEST_HOOK
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(MAXALIGN(sizeof(ProgressShared)));
	RequestNamedLWLockTranche("dedup_ext", 1);
}

static void
progress_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("dedup_ext progress", sizeof(ProgressShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(ProgressShared));
		shared->lock = &(GetNamedLWLockTranche("dedup_ext"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* a foreground job's slot goes with its transaction */
static void
progress_xact_callback(XactEvent event, void *arg)
{
	if (my_slot_foreground &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		 event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_ABORT))
		progress_end();
}

/*
 * ... or with the subtransaction it began in, if that is rolled back (a
 * failed call under a savepoint); released, it belongs to the parent's.
 */
static void
progress_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (!my_slot_foreground || mySubid != my_slot_subid)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		progress_end();
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		my_slot_subid = parentSubid;
}

/*
 * A process that exits in the middle of a job (a worker stopped by
 * pg_terminate_backend, a backend whose client went away) frees its slot:
 * the job is no longer running there.  Not after a crash: shared memory is
 * reset then.
 */
static void
progress_exit(int code, Datum arg)
{
	progress_end();
}

/* from _PG_init */
void
progress_init(void)
{
	RegisterXactCallback(progress_xact_callback, NULL);
	RegisterSubXactCallback(progress_subxact_callback, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
#ifdef DEDUP_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = progress_shmem_request;
#else
	progress_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = progress_shmem_startup;
}

/*
 * Take a slot for a job that starts running in this process.  When all slots
 * are taken the job runs without live progress: progress is a view, never a
 * reason to fail.
 */
void
progress_begin(int64 job_id, const char *kind, Oid relid, Oid userid, bool foreground)
{
	static bool exit_callback = false;

	if (shared == NULL)
		return;
	if (!exit_callback)
	{
		before_shmem_exit(progress_exit, (Datum) 0);
		exit_callback = true;
	}
	progress_end();
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < PROGRESS_SLOTS; i++)
		if (shared->slots[i].job_id == 0)
		{
			ProgressSlot *s = &shared->slots[i];

			memset(s, 0, sizeof(ProgressSlot));
			s->job_id = job_id;
			s->pid = MyProcPid;
			s->dbid = MyDatabaseId;
			s->userid = userid;
			s->relid = relid;
			strlcpy(s->kind, kind, sizeof(s->kind));
			strlcpy(s->state, "running", sizeof(s->state));
			s->started_at = s->updated_at = s->run_started_at = GetCurrentTimestamp();
			my_slot = s;
			my_slot_foreground = foreground;
			my_slot_subid = GetCurrentSubTransactionId();
			break;
		}
	LWLockRelease(shared->lock);
}

void
progress_phase(const char *phase)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	strlcpy(my_slot->phase, phase ? phase : "", sizeof(my_slot->phase));
	my_slot->updated_at = GetCurrentTimestamp();
	LWLockRelease(shared->lock);
}

/* counters as of now; a negative value leaves that counter alone */
void
progress_counts(int64 rows_total, int64 rows_done, int64 rows_changed, int64 batches_done)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (rows_total >= 0)
		my_slot->rows_total = rows_total;
	if (rows_done >= 0)
		my_slot->rows_done = rows_done;
	if (rows_changed >= 0)
		my_slot->rows_changed = rows_changed;
	if (batches_done >= 0)
		my_slot->batches_done = batches_done;
	my_slot->updated_at = GetCurrentTimestamp();
	LWLockRelease(shared->lock);
}

/*
 * A job started earlier (resumed): counting starts from its committed
 * counters, and its speed from the rows done before this run.
 */
void
progress_resumed(TimestampTz started_at, int64 rows_before_run)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_slot->started_at = started_at;
	my_slot->rows_before_run = rows_before_run;
	LWLockRelease(shared->lock);
}

void
progress_end(void)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_slot->job_id = 0;
	LWLockRelease(shared->lock);
	my_slot = NULL;
	my_slot_foreground = false;
}

/*
 * Is job_id in progress in a session of this database, as dedup_progress
 * shows it to the caller?  A foreground job's row is seen only by its own
 * transaction until it commits.
 */
bool
progress_job_visible(int64 job_id)
{
	bool		found = false;
	bool		all;

	if (shared == NULL)
		return false;
	/* a catalog lookup, not under the lock */
	all = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
	LWLockAcquire(shared->lock, LW_SHARED);
	for (int i = 0; i < PROGRESS_SLOTS && !found; i++)
	{
		ProgressSlot *s = &shared->slots[i];

		found = s->job_id == job_id && s->dbid == MyDatabaseId && (s->userid == GetUserId() || all);
	}
	LWLockRelease(shared->lock);
	return found;
}

/*
 * The slots of this database: a role sees its own jobs; pg_read_all_stats
 * sees all.  The last two columns came with 1.6: a database still at an
 * older version asks for the first thirteen, and tuplestore_putvalues reads
 * no more values than its descriptor has.
 */
Datum
dedup_progress_live(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		all;

	InitMaterializedSRF(fcinfo, 0);
	if (shared == NULL)
		return (Datum) 0;
	/* a catalog lookup, not under the lock */
	all = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
	LWLockAcquire(shared->lock, LW_SHARED);
	for (int i = 0; i < PROGRESS_SLOTS; i++)
	{
		ProgressSlot *s = &shared->slots[i];
		Datum		values[15];
		bool		nulls[15] = {0};

		if (s->job_id == 0 || s->dbid != MyDatabaseId || !(s->userid == GetUserId() || all))
			continue;
		values[0] = Int64GetDatum(s->job_id);
		values[1] = Int32GetDatum(s->pid);
		values[2] = CStringGetTextDatum(s->kind);
		values[3] = ObjectIdGetDatum(s->relid);
		/* NULL before the job's first phase, as dedup_jobs has it */
		if (s->phase[0] == '\0')
			nulls[4] = true;
		else
			values[4] = CStringGetTextDatum(s->phase);
		values[5] = CStringGetTextDatum(s->state);
		values[6] = Int64GetDatum(s->rows_total);
		values[7] = Int64GetDatum(s->rows_done);
		values[8] = Int64GetDatum(s->rows_changed);
		values[9] = Int64GetDatum(s->batches_done);
		values[10] = TimestampTzGetDatum(s->started_at);
		values[11] = TimestampTzGetDatum(s->updated_at);
		values[12] = ObjectIdGetDatum(s->userid);
		values[13] = TimestampTzGetDatum(s->run_started_at);
		values[14] = Int64GetDatum(s->rows_before_run);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(shared->lock);
	return (Datum) 0;
}
