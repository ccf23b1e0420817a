/*
 * control.c
 *		dedup_wait, dedup_pause, dedup_resume, dedup_cancel, and the locks
 *		that tell a running background job from one whose worker is gone.
 *
 * A worker holds a session-level advisory lock on its job while it runs it
 * (objsubid JOB_LOCK_SUBID, which no SQL-level advisory lock uses).  A job
 * whose row says 'running' but whose lock nobody holds lost its worker: the
 * server stopped or the worker died.  dedup_jobs shows it as 'interrupted'.
 *
 * Control is asynchronous: pausing or cancelling a running job leaves a
 * request in its row, which the worker reads after every batch; a job that
 * no worker runs (queued, paused, interrupted) changes state at once.
 */
#include "dedup_ext.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(dedup_wait);
PG_FUNCTION_INFO_V1(dedup_pause);
PG_FUNCTION_INFO_V1(dedup_resume);
PG_FUNCTION_INFO_V1(dedup_cancel);

#define JOB_LOCK_SUBID	25700
#define SLOT_LOCK_SUBID 25701

static void
job_locktag(LOCKTAG *tag, int64 job_id)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (job_id >> 32), (uint32) job_id,
						 JOB_LOCK_SUBID);
}

/* the worker's claim on a job; false if another process has it */
bool
job_lock_try(int64 job_id)
{
	LOCKTAG		tag;

	job_locktag(&tag, job_id);
	return LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

void
job_unlock(int64 job_id)
{
	LOCKTAG		tag;

	job_locktag(&tag, job_id);
	LockRelease(&tag, ExclusiveLock, true);
}

/* one of the dedup_ext.max_workers worker slots of this database, or -1 */
int
worker_slot_take(void)
{
	for (int i = 0; i < dedup_max_workers; i++)
	{
		LOCKTAG		tag;

		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, (uint32) i, SLOT_LOCK_SUBID);
		if (LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL)
			return i;
	}
	return -1;
}

void
worker_slot_release(int slot)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, (uint32) slot, SLOT_LOCK_SUBID);
	LockRelease(&tag, ExclusiveLock, true);
}

static char *
read_effective_state(int64 job_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};

	spi_exec_as_owner(psprintf("SELECT j.state FROM %s.dedup_jobs j WHERE j.job_id OPERATOR(pg_catalog.=) $1",
							   dedup_ext_schema()),
					  1, types, values, NULL, SPI_OK_SELECT);
	return SPI_processed == 1 ?
		SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
}

/*
 * The job's state as dedup_jobs shows it ('interrupted' for a lost worker).
 * dedup_jobs reads the row under the statement's snapshot and the worker's
 * lock afterwards, live: a worker that commits 'done' and lets its lock go in
 * between looks lost.  It releases the lock only after that commit, so a
 * second statement, whose snapshot is newer than the first one's look at the
 * lock, sees the final state; a job that still reads 'interrupted' is lost.
 */
char *
job_effective_state(int64 job_id)
{
	char	   *state = read_effective_state(job_id);

	if (state != NULL && strcmp(state, "interrupted") == 0)
		state = read_effective_state(job_id);
	return state;
}

static void
set_state(int64 job_id, const char *assignments)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};

	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET %s, updated_at = pg_catalog.clock_timestamp()"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1",
							   dedup_ext_schema(), assignments),
					  1, types, values, NULL, SPI_OK_UPDATE);
}

static int64
job_id_arg(FunctionCallInfo fcinfo)
{
	dedup_require_arg(fcinfo, 0, "job_id");
	return PG_GETARG_INT64(0);
}

/*
 * The state, as dedup_jobs shows it, of a job whose row the caller locked
 * (job_fetch for update).  Only the submitter (or a superuser) controls a
 * job; a restored one (job_fetch) ran elsewhere, and does not run here.
 */
static char *
control_state(DedupJob *job)
{
	job_require_here(job);
	return job_effective_state(job->job_id);
}

static bool
is_pending(const char *pending, const char *request)
{
	return pending != NULL && strcmp(pending, request) == 0;
}

static bool
state_is(const char *state, const char *one, const char *two, const char *three)
{
	return strcmp(state, one) == 0 || (two && strcmp(state, two) == 0) ||
		(three && strcmp(state, three) == 0);
}

/*
 * Cancel, in the caller's transaction, a job no worker runs (queued, paused
 * or interrupted): its constraints, guards and work list go, it closes as
 * cancelled, and its archive stays for dedup_rollback (or goes, empty).
 */
static void
cancel_unrun(DedupJob *job)
{
	int64		job_id = job->job_id;

	backfill_drop_constraints(job);
	if (strcmp(job->kind, "dedup") == 0)
		guards_drop(job_id, job->relid, job->unique_index);
	job_drop_work_table(job_id, job->work_table);
	set_state(job_id, psprintf("state = 'cancelled', phase = NULL, control = NULL, worker_pid = NULL,"
							   " finished_at = pg_catalog.clock_timestamp()%s",
							   job_drop_unused_archive(job)));
	archive_close(job_id);
}

Datum
dedup_pause(PG_FUNCTION_ARGS)
{
	int64		job_id = job_id_arg(fcinfo);
	DedupJob   *job;
	char	   *state;
	bool		result = true;

	PreventCommandIfReadOnly("dedup_pause()");
	SPI_connect();
	job = job_fetch(job_id, true, true);
	state = control_state(job);
	/*
	 * A cancel requested stays requested: the job is to end, not wait.  One
	 * whose worker was lost before it carried it out is cancelled now.
	 */
	if (is_pending(job->control, "cancel"))
	{
		if (state_is(state, "queued", "interrupted", NULL))
			cancel_unrun(job);
		result = false;
	}
	else if (state_is(state, "queued", "interrupted", NULL))
	{
		if (strcmp(job->kind, "dedup") == 0)
			guards_drop(job_id, job->relid, job->unique_index);
		set_state(job_id, "state = 'paused', control = NULL");
	}
	else if (strcmp(state, "running") == 0)
		set_state(job_id, "control = 'pause'");
	else
		result = false;
	SPI_finish();
	PG_RETURN_BOOL(result);
}

/*
 * Resume a paused or interrupted job, or make sure a queued one has a
 * worker (after a restart without preloading, nothing else starts one).
 */
Datum
dedup_resume(PG_FUNCTION_ARGS)
{
	int64		job_id = job_id_arg(fcinfo);
	DedupJob   *job;
	char	   *state;
	bool		result = true;

	PreventCommandIfReadOnly("dedup_resume()");
	SPI_connect();
	job = job_fetch(job_id, true, true);
	state = control_state(job);
	/*
	 * Resume is no way to take a cancel back: a running job's stays
	 * requested, and one whose worker was lost before it carried it out is
	 * cancelled now.
	 */
	if (is_pending(job->control, "cancel"))
	{
		if (state_is(state, "queued", "interrupted", NULL))
			cancel_unrun(job);
		result = false;
	}
	else if (state_is(state, "paused", "interrupted", "queued"))
	{
		set_state(job_id, "state = 'queued', control = NULL, worker_pid = NULL");
		launch_at_commit();
	}
	/* a pause requested but not carried out yet is withdrawn: the job goes on */
	else if (strcmp(state, "running") == 0 && is_pending(job->control, "pause"))
		set_state(job_id, "control = NULL");
	else
		result = false;
	SPI_finish();
	PG_RETURN_BOOL(result);
}

/*
 * Cancel a job.  A running one stops after its current batch; the batches it
 * committed stay done (and archived, so dedup_rollback can undo them).
 */
Datum
dedup_cancel(PG_FUNCTION_ARGS)
{
	int64		job_id = job_id_arg(fcinfo);
	char	   *state;
	bool		result = true;
	DedupJob   *job;

	PreventCommandIfReadOnly("dedup_cancel()");
	SPI_connect();

	/*
	 * A restored job that did not finish where it ran runs nowhere here:
	 * cancelling it closes its row, drops its work list (restored with it)
	 * and takes back the INSERT its archives granted while it ran; the
	 * archives stay, for dedup_drop_archive.
	 */
	job = job_fetch(job_id, true, true);
	if (!job->here)
	{
		result = !state_is(job->state, "done", "failed", "cancelled");
		if (result)
		{
			job_drop_restored_work_table(job_id, job->work_table);
			set_state(job_id, "state = 'cancelled', phase = NULL, control = NULL, worker_pid = NULL,"
					  " finished_at = pg_catalog.clock_timestamp()");
			archive_close(job_id);
		}
		SPI_finish();
		PG_RETURN_BOOL(result);
	}
	state = control_state(job);
	if (state_is(state, "queued", "paused", "interrupted"))
		cancel_unrun(job);
	else if (strcmp(state, "running") == 0)
		set_state(job_id, "control = 'cancel'");
	else
		result = false;
	SPI_finish();
	PG_RETURN_BOOL(result);
}

/*
 * A job with add_unique ends with CREATE INDEX CONCURRENTLY, which waits for
 * every transaction whose snapshot is older than its own.  The session in
 * dedup_wait holds its statement's snapshot for as long as it waits, so the
 * job would wait for the waiter.  The waiter therefore flags itself the way
 * a CREATE INDEX CONCURRENTLY of a plain index does (PROC_IN_SAFE_IC), which
 * other index builds do not wait for.  That is safe here: the flag changes
 * nothing else (vacuum still keeps what the snapshot sees), dedup_wait reads
 * only dedup_job, and no plan of the waiting statement can use an index that
 * did not exist when it was planned.
 */
static void
set_waiting_flag(bool on)
{
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	if (on)
		MyProc->statusFlags |= PROC_IN_SAFE_IC;
	else
		MyProc->statusFlags &= ~PROC_IN_SAFE_IC;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
}

/*
 * The flag cannot cover the moment between the start of the waiting
 * statement and the call: an index build that listed this transaction then
 * waits for it to end, while it waits for the job.  Detect that and end the
 * wait with an error, which ends the transaction and lets the build go on.
 */
static void
refuse_waiting_for_each_other(int64 job_id)
{
	char	   *vxid = psprintf("%d/%u", MyProc->backendId, MyProc->lxid);
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {CStringGetTextDatum(vxid), Int64GetDatum(job_id)};

	spi_exec_as_owner(psprintf("SELECT FROM pg_catalog.pg_locks l JOIN %s.dedup_job j"
							   " ON j.worker_pid OPERATOR(pg_catalog.=) l.pid"
							   " WHERE l.locktype OPERATOR(pg_catalog.=) 'virtualxid' AND NOT l.granted"
							   " AND l.virtualxid OPERATOR(pg_catalog.=) $1"
							   " AND j.job_id OPERATOR(pg_catalog.=) $2", dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("job %lld is waiting for this transaction to end", (long long) job_id),
				 errdetail("Its CREATE INDEX CONCURRENTLY waits for transactions that were open when it started, this one included."),
				 errhint("Call dedup_wait again: the job goes on once this transaction has ended.")));
}

/*
 * Does a process hold the job's lock, that is, is its worker alive?  One
 * look at that lock in the lock table (its partition's LWLock, shared).
 * dedup_jobs tells the same from pg_locks, which takes every partition's
 * LWLock and every backend's fast-path lock: every session that takes or
 * releases a lock waits for it, and dedup_wait looks ten times a second
 * for as long as a job runs.  A worker between two transactions has no
 * virtual transaction id, which GetLockConflicts does not report: false is
 * not the answer, only "ask dedup_jobs".
 */
static bool
job_worker_seen(int64 job_id)
{
	LOCKTAG		tag;

	job_locktag(&tag, job_id);
	return VirtualTransactionIdIsValid(GetLockConflicts(&tag, ShareLock, NULL)[0]);
}

/*
 * The job's state as dedup_jobs shows it, cheaply while its worker runs,
 * and first (when it runs CREATE or DROP INDEX CONCURRENTLY) the check that
 * the worker does not wait for this transaction.
 */
static char *
poll_state(int64 job_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};
	char	   *state;
	char	   *phase;

	spi_exec_as_owner(psprintf("SELECT j.state, j.phase FROM %s.dedup_job j"
							   " WHERE j.job_id OPERATOR(pg_catalog.=) $1 AND j.background",
							   dedup_ext_schema()),
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		return job_effective_state(job_id);
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	phase = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (strcmp(state, "running") != 0)
		return state;
	if (phase != NULL && strcmp(phase, "building unique index") == 0)
		refuse_waiting_for_each_other(job_id);
	return job_worker_seen(job_id) ? state : job_effective_state(job_id);
}

/*
 * A caller whose transaction holds a lock on the job's table may be what the
 * job waits for, while the caller waits for the job: neither would ever go
 * on, and PostgreSQL cannot see it (one side is this loop).  A unique
 * index's or a constraint's last steps conflict even with a read's lock;
 * batches with a lock that writes or locks rows (ROW SHARE and up: the
 * caller may hold the rows they need).  Refused while the job may still
 * need them, and the call would wait.
 */
static void
refuse_waiting_on_own_lock(DedupJob *job, bool waits)
{
	LOCKTAG		tag;
	char	   *add_unique = job_param(job, "add_unique");
	char	   *add_constraint = job_param(job, "add_constraint");
	bool		strong_last = (add_unique && strcmp(add_unique, "true") == 0) ||
		(add_constraint && strcmp(add_constraint, "true") == 0);

	if (!waits || !state_is(job->state, "queued", "running", NULL) || !job->here)
		return;
	SET_LOCKTAG_RELATION(tag, MyDatabaseId, job->relid);
	for (LOCKMODE mode = strong_last ? AccessShareLock : RowShareLock; mode <= AccessExclusiveLock; mode++)
		if (dedup_lock_held_by_me(&tag, mode))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("dedup_wait cannot wait for job %lld in a transaction that holds a lock on its table",
							(long long) job->job_id),
					 errdetail("The job may need a lock that conflicts with it (to build its unique index, to add its constraints): it would wait for this transaction, and this transaction for it."),
					 errhint("COMMIT or ROLLBACK first, then call dedup_wait in a transaction of its own.")));
}

/* how long after the launcher's start dedup_wait waits for it to resume a job */
#define RESUME_GRACE_MS (60 * 1000)

/*
 * Will the launcher resume interrupted job job_id by itself?  Yes when its
 * row was last written before the launcher's last start: the server stopped
 * or crashed under it, and the resuming worker of its database re-queues it
 * (a worker stopped by pg_terminate_backend since leaves it to
 * dedup_resume).
 */
static bool
resumed_by_launcher(int64 job_id)
{
	TimestampTz started = launcher_started_at();
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		values[2] = {Int64GetDatum(job_id), TimestampTzGetDatum(started)};

	/*
	 * Not for ever: a resuming worker re-queues its database's jobs within
	 * seconds of the launcher's start, and one that has not after a minute
	 * never will (no slot, a database closed to connections, a job still
	 * alive when it looked, a standby where no launcher runs).
	 */
	if (started == 0 || RecoveryInProgress() ||
		TimestampDifferenceExceeds(started, GetCurrentTimestamp(), RESUME_GRACE_MS))
		return false;
	spi_exec_as_owner(psprintf("SELECT FROM %s.dedup_job j WHERE j.job_id OPERATOR(pg_catalog.=) $1"
							   " AND j.updated_at OPERATOR(pg_catalog.<) $2", dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_SELECT);
	return SPI_processed == 1;
}

/*
 * Wait until the job needs nobody: done, failed or cancelled, or paused or
 * interrupted (which wait for dedup_resume; not one the launcher is about
 * to resume, after a restart).  With a timeout, return the state at that
 * time.
 */
static text *
wait_until_final(int64 job_id, TimestampTz deadline)
{
	MemoryContext fn_cxt = CurrentMemoryContext;
	MemoryContext loop_cxt;
	MemoryContext oldcxt;
	char	   *state;
	text	   *result;
	DedupJob   *job;

	SPI_connect();
	job = job_fetch(job_id, false, false);
	if (job->created_here)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld was submitted in this transaction", (long long) job_id),
				 errdetail("A background job starts only after the transaction that submitted it commits."),
				 errhint("COMMIT, then call dedup_wait.")));

	refuse_waiting_on_own_lock(job, deadline == 0 || deadline > GetCurrentTimestamp());
	/* a restored job runs nowhere: its state stays as the dump had it */
	if (!job->here)
	{
		state = job_effective_state(job_id);
		oldcxt = MemoryContextSwitchTo(fn_cxt);
		result = cstring_to_text(state);
		MemoryContextSwitchTo(oldcxt);
		SPI_finish();
		return result;
	}
	loop_cxt = AllocSetContextCreate(CurrentMemoryContext, "dedup_wait", ALLOCSET_SMALL_SIZES);
	for (;;)
	{
		bool		final;
		char	   *polled;

		/* each look in an SPI connection of its own, whose results it frees */
		MemoryContextReset(loop_cxt);
		SPI_connect();
		polled = poll_state(job_id);
		final = state_is(polled, "done", "failed", "cancelled") ||
			state_is(polled, "paused", NULL, NULL) ||
			(state_is(polled, "interrupted", NULL, NULL) && !resumed_by_launcher(job_id)) ||
			(deadline != 0 && GetCurrentTimestamp() >= deadline);
		state = MemoryContextStrdup(loop_cxt, polled);
		SPI_finish();
		if (final)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	oldcxt = MemoryContextSwitchTo(fn_cxt);
	result = cstring_to_text(state);	/* outlives SPI_finish */
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	return result;
}

Datum
dedup_wait(PG_FUNCTION_ARGS)
{
	int64		job_id = job_id_arg(fcinfo);
	TimestampTz deadline = 0;
	text	   *volatile result = NULL;

	if (!PG_ARGISNULL(1))
	{
		Interval   *timeout = PG_GETARG_INTERVAL_P(1);
		Interval	zero = {0};

		if (DatumGetBool(DirectFunctionCall2(interval_lt, PointerGetDatum(timeout), PointerGetDatum(&zero))))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"timeout\" must not be negative"),
					 errhint("A zero timeout returns the job's state at once; NULL waits for its end.")));
		/* a timeout of a thousand years or more waits for the end, as NULL does (it overflowed a date) */
		if (timeout->month < 12 * 1000 && timeout->day < 365 * 1000 &&
			timeout->time < INT64CONST(1000) * 365 * USECS_PER_DAY)
			deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															   TimestampTzGetDatum(GetCurrentTimestamp()),
															   PointerGetDatum(timeout)));
	}
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("dedup_wait cannot run in a %s transaction",
						IsolationIsSerializable() ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errdetail("Its snapshot would never show the job's progress."),
				 errhint("Call it in a READ COMMITTED transaction.")));

	/*
	 * As early as possible, and only while waiting: an error caught by the
	 * caller (a subtransaction) must not leave the flag on the transaction.
	 */
	set_waiting_flag(true);
	PG_TRY();
	{
		result = wait_until_final(job_id, deadline);
	}
	PG_FINALLY();
	{
		set_waiting_flag(false);
	}
	PG_END_TRY();
	PG_RETURN_TEXT_P(result);
}
