/*
 * worker.c
 *		The background worker: takes queued jobs of its database and runs
 *		them, each step in its own transaction, as the submitting role.
 *
 * The worker connects as the bootstrap superuser (a job's submitter may be a
 * role without LOGIN) and runs every transaction of a job with the
 * submitter's user id and SECURITY_LOCAL_USERID_CHANGE, so that nothing the
 * job runs (triggers, filter functions) can SET ROLE back; only the job's own
 * bookkeeping switches to the extension owner, as it does in the foreground.
 * search_path is pg_catalog, pg_temp: the job's filter and keep were stored
 * schema-qualified at submit time.
 *
 * A step that fails on a lock timeout, a deadlock or a serialization failure
 * is retried after a pause; any other error fails the job, with its SQLSTATE,
 * message, detail and hint in dedup_jobs.error.
 */
#include "dedup_ext.h"

#include <sched.h>
#include <sys/resource.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

PGDLLEXPORT void dedup_worker_main(Datum arg);

/* sleep ms, waking for shutdown */
void
bg_sleep(int ms)
{
	if (ms <= 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The pause between batches (dedup_ext.batch_delay), looking for a pause or
 * cancel request once a second: a long delay must not keep a worker (and
 * its slot) that was asked to stop.  The caller's loop obeys the request.
 */
void
bg_delay(BgJob *job)
{
	int			left = job->batch_delay;

	while (left > 0)
	{
		int			slice = Min(left, 1000);

		bg_sleep(slice);
		left -= slice;
		if (left > 0 && bg_control_requested(job))
			return;
	}
}

/* take a reloaded configuration (SIGHUP) between transactions */
static void
reload_config(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/*
 * Lock timeouts, deadlocks and serialization failures are retried until the
 * step commits.  A merge's batch also retries a unique violation a few
 * times: a writer may add a referencing row that collides with a re-pointed
 * one after the batch removed the collisions, and the retry removes it too;
 * a violation that stays is a real one.
 */
#define UNIQUE_RETRIES 3

static bool
retryable(BgJob *job, int sqlerrcode, int *unique_violations)
{
	if (sqlerrcode == ERRCODE_UNIQUE_VIOLATION && job->phase && strcmp(job->phase, "merging") == 0)
		return ++(*unique_violations) <= UNIQUE_RETRIES;
	return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE;
}

/* when each step ran, for bench/background.sh --steps (bench/steps.py) */
static void
log_step(BgJob *job, bool begins)
{
	if (begins)
		elog(DEBUG2, "dedup_ext job %lld: step begins in phase \"%s\"",
			 (long long) job->job_id, job->phase ? job->phase : "");
	else
		elog(DEBUG2, "dedup_ext job %lld: step committed", (long long) job->job_id);
}

/*
 * SQL true for row j of dedup_job when it is the job's row the worker
 * claimed: a DROP and CREATE EXTENSION (or pg_restore --clean) while the
 * worker ran may have left in its place nothing, a new job with the same
 * id, or the old row restored from a dump, whose origin is the same but
 * not noted in dedup_job_here (job_here_sql).
 */
static char *
job_row_is_ours(int64 job_id, const char *origin)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "j.job_id OPERATOR(pg_catalog.=) %lld", (long long) job_id);
	if (origin)
		appendStringInfo(&buf, " AND j.origin OPERATOR(pg_catalog.=) %s::pg_catalog.uuid AND %s",
						 sql_literal(origin), job_here_sql("j"));
	return buf.data;
}

/* the table dedup_job of the extension as it is now; InvalidOid without one */
static Oid
job_table(void)
{
	Oid			nspid = dedup_ext_namespace();

	return OidIsValid(nspid) ? get_relname_relid("dedup_job", nspid) : InvalidOid;
}

static void
job_gone(int64 job_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("dedup_ext: job %lld no longer exists", (long long) job_id),
			 errdetail("Its row in dedup_job was deleted or replaced while its worker ran it (the extension dropped and created again, a restore, or a DELETE)."),
			 errhint("The worker stopped without touching the table again; its last batch committed before that.")));
}

/*
 * A step writes the job's table only while the job's row is the one the
 * worker claimed, in the dedup_job it claimed it from (a database before
 * 1.5 has no origins: a new dedup_job, made by DROP and CREATE EXTENSION,
 * starts its ids at 1 again).  Reading dedup_job holds it (a DROP EXTENSION
 * waits for the step to commit).
 */
static void
require_job_row(BgJob *job)
{
	if (!OidIsValid(job->job_table) || job_table() != job->job_table)
		job_gone(job->job_id);
	spi_exec_as_owner(psprintf("SELECT FROM %s.dedup_job j WHERE %s", dedup_ext_schema(),
							   job_row_is_ours(job->job_id, job->origin)),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		job_gone(job->job_id);
}

/*
 * A step of the job's work needs its table: one dropped while the job
 * waited, paused or ran fails it saying so, not with "relation with OID".
 */
static void
require_table(BgJob *job)
{
	if (get_rel_name(job->relid) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the table of job %lld no longer exists", (long long) job->job_id),
				 errdetail("It was dropped after the job was submitted.")));
	if (OidIsValid(job->parent) && get_rel_name(job->parent) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the parent table of job %lld no longer exists", (long long) job->job_id),
				 errdetail("It was dropped after the job was submitted.")));
}

/*
 * Run step in one transaction, as the job's submitter, with the job's
 * lock_timeout.  A retryable failure rolls the step back and runs it again
 * after a pause, until it commits, or, if stoppable, until a pause or cancel
 * request makes the caller stop (returns false).  Other errors propagate.
 */
static bool
run_step(BgJob *job, void (*step) (BgJob *job, void *arg), void *arg, bool stoppable)
{
	int			unique_violations = 0;

	for (;;)
	{
		ErrorData  *volatile edata = NULL;
		Oid			saved_user;
		int			saved_sec;

		reload_config();
		StartTransactionCommand();
		GetUserIdAndSecContext(&saved_user, &saved_sec);
		PG_TRY();
		{
			SetUserIdAndSecContext(job->submitter, SECURITY_LOCAL_USERID_CHANGE);
			(void) set_config_option("lock_timeout", psprintf("%d", job->lock_timeout),
									 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
			PushActiveSnapshot(GetTransactionSnapshot());
			SPI_connect();
			log_step(job, true);
			require_job_row(job);
			if (stoppable)
				require_table(job);
			step(job, arg);
			/* a step armed to yield (cpu_yield.c) is so for itself only */
			cpu_yield_disarm();
			SPI_finish();
			PopActiveSnapshot();
			/* deferred triggers fire in the commit: still as the submitter */
			CommitTransactionCommand();
			log_step(job, false);
			SetUserIdAndSecContext(saved_user, saved_sec);
		}
		PG_CATCH();
		{
			cpu_yield_disarm();
			MemoryContextSwitchTo(job->cxt);
			edata = CopyErrorData();
			if (!retryable(job, edata->sqlerrcode, &unique_violations))
				PG_RE_THROW();
			FlushErrorState();
			AbortCurrentTransaction();
		}
		PG_END_TRY();
		MemoryContextSwitchTo(job->cxt);
		if (edata == NULL)
			return true;

		/*
		 * Retried here, after PG_END_TRY: a "continue" inside PG_CATCH would
		 * only leave the do-while of the macros and report a commit.
		 */
		job->retries++;
		elog(DEBUG1, "dedup_ext job %lld: retrying a batch after: %s",
			 (long long) job->job_id, edata->message);
		FreeErrorData(edata);
		if (stoppable && bg_control_requested(job))
			return false;
		bg_sleep(Max(job->lock_timeout, 100));
	}
}

/* a step of the job's work: a pause or cancel request stops its retries */
bool
bg_xact(BgJob *job, void (*step) (BgJob *job, void *arg), void *arg)
{
	return run_step(job, step, arg, true);
}

/* a step that is retried until it commits, whatever is requested */
void
bg_xact_always(BgJob *job, void (*step) (BgJob *job, void *arg), void *arg)
{
	(void) run_step(job, step, arg, false);
}

/* the worker's own identity, between jobs and steps */
static Oid	worker_user;
static int	worker_sec;

/*
 * Abort whatever transaction an error left open, and be the worker again: a
 * statement that commits and starts transactions of its own (bg_toplevel)
 * and failed in one of them leaves the submitter as the user an abort
 * returns to.
 */
void
bg_abort(void)
{
	AbortOutOfAnyTransaction();
	SetUserIdAndSecContext(worker_user, worker_sec);
}

/*
 * Run one utility statement that must be at top level (CREATE INDEX
 * CONCURRENTLY, DROP INDEX CONCURRENTLY): it commits and starts
 * transactions of its own, which SPI cannot allow.
 */
void
bg_toplevel(BgJob *job, const char *sql)
{
	List	   *raw;
	RawStmt    *rs;
	PlannedStmt *pstmt;
	Oid			saved_user;
	int			saved_sec;

	StartTransactionCommand();
	GetUserIdAndSecContext(&saved_user, &saved_sec);
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	require_job_row(job);
	SPI_finish();
	SetUserIdAndSecContext(job->submitter, SECURITY_LOCAL_USERID_CHANGE);

	/*
	 * The statement commits the transaction it starts in, so its parse tree
	 * and whatever it allocates must not live in that transaction's memory
	 * (exec_simple_query keeps them in MessageContext for the same reason).
	 */
	MemoryContextSwitchTo(job->cxt);
	raw = pg_parse_query(sql);
	if (list_length(raw) != 1)
		elog(ERROR, "dedup_ext: expected one statement: %s", sql);
	rs = linitial_node(RawStmt, raw);
	pstmt = makeNode(PlannedStmt);
	pstmt->commandType = CMD_UTILITY;
	pstmt->canSetTag = true;
	pstmt->utilityStmt = rs->stmt;
	pstmt->stmt_location = rs->stmt_location;
	pstmt->stmt_len = rs->stmt_len;
	log_step(job, true);
	ProcessUtility(pstmt, sql, false, PROCESS_UTILITY_TOPLEVEL, NULL, NULL, None_Receiver, NULL);
	/* CONCURRENTLY pops the snapshot it was given; anything else leaves it */
	if (ActiveSnapshotSet())
		PopActiveSnapshot();
	CommitTransactionCommand();
	log_step(job, false);
	SetUserIdAndSecContext(saved_user, saved_sec);
	MemoryContextSwitchTo(job->cxt);
}

/*
 * Compress the full-page images of the job's bulk writes
 * (dedup_ext.wal_compression): on around the statements of a delete or
 * rename batch and of a backfill batch, around the first statement of a
 * pass, and around the unique index build; off again
 * before the job's row is written (bg_record turns it off itself), and for
 * a merge batch, which creates and analyzes tables.  A batch after a
 * checkpoint writes one image per page it changes, and an index build an
 * image of each page of the new index: the application's commits flush
 * that WAL before their own.  wal_compression
 * is for superusers because the size of compressed WAL tells something of
 * what the pages hold; these statements write the pages of the submitter's
 * table, its indexes and its archive, catalog rows of the new index, and
 * whatever triggers and event triggers write, which is why it is a setting
 * of the server's administrator and off by default.  A server that
 * compresses already is left as it is.  In a transaction that fails the
 * setting goes back by itself.  Without lz4 or zstd (or before 15) this
 * does nothing.
 */
void
bg_compress_wal(bool on)
{
#ifdef DEDUP_WAL_COMPRESSION
	static bool compressing = false;

	if (on && dedup_wal_compression &&
		strcmp(GetConfigOption("wal_compression", false, false), "off") == 0)
	{
		SetConfigOption("wal_compression", DEDUP_WAL_COMPRESSION, PGC_SUSET, PGC_S_SESSION);
		compressing = true;
	}
	else if (!on && compressing)
	{
		/* back to the server's own value, not a session's "off" */
		SetConfigOption("wal_compression", NULL, PGC_SUSET, PGC_S_SESSION);
		compressing = false;
	}
#endif
}

/* run a step as the bootstrap superuser (bookkeeping that needs no retry) */
static void
plain_xact(void (*step) (void *arg), void *arg)
{
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	step(arg);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Record progress in the job's row (as the extension owner), in the current
 * transaction, and read back the counters and any control request.
 */
void
bg_record(BgJob *job, const char *assignments)
{
	MemoryContext oldcxt;
	char	   *control;
	char	   *phase;

	/* the job's row shares its pages with other jobs' rows: never compressed */
	bg_compress_wal(false);
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job j SET %s%sretries = retries OPERATOR(pg_catalog.+) %lld,"
							   " updated_at = pg_catalog.clock_timestamp()"
							   " WHERE %s"
							   " RETURNING control, phase, rows_total, rows_done, rows_changed,"
							   " batches_done, checkpoint, passes::pg_catalog.int8",
							   dedup_ext_schema(), assignments, assignments[0] ? ", " : "",
							   (long long) job->retries, job_row_is_ours(job->job_id, job->origin)),
					  0, NULL, NULL, NULL, SPI_OK_UPDATE_RETURNING);
	/* deleted by hand since the step's require_job_row: nothing to record into */
	if (SPI_processed != 1)
		job_gone(job->job_id);
	job->retries = 0;
	control = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	phase = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	oldcxt = MemoryContextSwitchTo(job->cxt);
	job->control = control ? pstrdup(control) : NULL;
	job->phase = phase ? pstrdup(phase) : NULL;
	MemoryContextSwitchTo(oldcxt);
	job->rows_total = spi_get_int64(0, 3);
	job->rows_done = spi_get_int64(0, 4);
	job->rows_changed = spi_get_int64(0, 5);
	job->batches_done = spi_get_int64(0, 6);
	job->checkpoint = spi_get_int64(0, 7);
	job->passes = (int) spi_get_int64(0, 8);
}

/* after a commit: what other sessions see in dedup_progress */
void
bg_publish(BgJob *job)
{
	progress_phase(job->phase);
	progress_counts(job->rows_total, job->rows_done, job->rows_changed, job->batches_done);
}

static void
read_control(void *arg)
{
	bg_record((BgJob *) arg, "");
}

/* between retries of a step: has the job been asked to pause or cancel? */
bool
bg_control_requested(BgJob *job)
{
	plain_xact(read_control, job);
	MemoryContextSwitchTo(job->cxt);
	return job->control != NULL;
}

/*
 * A pause or cancel request (a cancelled job drops its work table), as the
 * job's row says now, read under its row lock: a retry must not carry out a
 * pause that dedup_resume withdrew meanwhile, nor miss a cancel that
 * replaced it.
 */
/*
 * A dedup job that ends having removed (and re-pointed) nothing leaves no
 * empty archive: true when it dropped it.  (A merge's referencing tables may
 * have archives of their own: kept.)
 */
static bool
empty_archive_dropped(BgJob *job)
{
	return strcmp(job->kind, "dedup") == 0 && job->archive_table &&
		job->action != DEDUP_ACTION_MERGE && archive_drop_if_empty(job->archive_table);
}

/*
 * A merge's rows_changed counts the referencing rows it re-pointed or
 * removed as well, once it ends, as a foreground merge's does (its batches
 * count the table's rows only: a pass compares them with its losers).
 */
static const char *
merge_refs_changed(BgJob *job)
{
	return strcmp(job->kind, "dedup") == 0 && job->action == DEDUP_ACTION_MERGE ?
		", rows_changed = rows_changed OPERATOR(pg_catalog.+) refs_repointed OPERATOR(pg_catalog.+) refs_removed" : "";
}

static void
obey_step(BgJob *job, void *arg)
{
	bool	   *obeyed = (bool *) arg;

	bg_record(job, "");
	*obeyed = job->control != NULL;
	if (!*obeyed)
		return;
	if (strcmp(job->control, "cancel") == 0)
	{
		backfill_drop_constraints(job_fetch(job->job_id, false, false));
		job_drop_work_table(job->job_id, job->work);
		bg_record(job, psprintf("state = 'cancelled', phase = NULL, control = NULL, worker_pid = NULL,"
								" finished_at = pg_catalog.clock_timestamp()%s%s",
								empty_archive_dropped(job) ? ", archive_table = NULL" : "",
								merge_refs_changed(job)));
		archive_close(job->job_id);
	}
	else
		bg_record(job, "state = 'paused', control = NULL, worker_pid = NULL");
}

/*
 * true when the job stopped on request (seen after its last commit).  A job
 * whose work is all done (phase finishing: after its last batch or pass, its
 * unique index build, or its last constraint) ends done: a request that came
 * during that last step came too late, and a job recorded as cancelled or
 * paused with all its work done would say what did not happen.
 */
bool
bg_obeyed(BgJob *job)
{
	bool		obeyed = false;

	if (job->control == NULL || (job->phase && strcmp(job->phase, "finishing") == 0))
		return false;
	/* a stopped job leaves no guard refusing writers' duplicates */
	if (bg_may_have_guards(job))
		bg_drop_guards(job);
	run_step(job, obey_step, &obeyed, false);
	return obeyed;
}

static void
finish_step(BgJob *job, void *arg)
{
	bool		no_archive = empty_archive_dropped(job);

	job_drop_work_table(job->job_id, job->work);
	bg_record(job, psprintf("state = 'done', phase = NULL, control = NULL, worker_pid = NULL,"
							" finished_at = pg_catalog.clock_timestamp()%s%s%s%s%s",
							job->strategy ? ", strategy = '" : "",
							job->strategy ? job->strategy : "",
							job->strategy ? "'" : "",
							no_archive ? ", archive_table = NULL" : "",
							merge_refs_changed(job)));
	archive_close(job->job_id);
}

void
bg_finish(BgJob *job)
{
	run_step(job, finish_step, NULL, false);
}

/*
 * Is dedup_ext installed in this database, at a version with background
 * jobs (1.0 has none)?  A resuming worker is started for every database.
 */
static void
check_installed(void *arg)
{
	*(bool *) arg = SPI_execute("SELECT FROM pg_catalog.pg_extension"
								" WHERE extname OPERATOR(pg_catalog.=) 'dedup_ext'"
								" AND extversion OPERATOR(pg_catalog.<>) '1.0'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1;
}

/*
 * Jobs whose worker the previous server run lost go back to the queue: those
 * last written before the launcher started (a worker stopped since, by
 * pg_terminate_backend, leaves its job to dedup_resume; resumed_by_launcher
 * in control.c draws the same line)
 */
static void
requeue_lost(void *arg)
{
	char	   *schema = dedup_ext_schema();
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		values[1] = {TimestampTzGetDatum(launcher_started_at())};

	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job j SET state = 'queued', worker_pid = NULL"
							   " WHERE state OPERATOR(pg_catalog.=) 'running' AND background"
							   " AND (j.updated_at IS NULL OR j.updated_at OPERATOR(pg_catalog.<) $1)"
							   " AND NOT %s.dedup_job_alive(job_id) AND %s", schema, schema, job_here_sql("j")),
					  1, types, values, NULL, SPI_OK_UPDATE);
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("dedup_ext: resuming %llu interrupted background jobs",
						(unsigned long long) SPI_processed)));
}

/* how many jobs of the database are queued; arg: where to say it */
static void
count_queued(void *arg)
{
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FROM %s.dedup_job j"
							   " WHERE state OPERATOR(pg_catalog.=) 'queued' AND %s",
							   dedup_ext_schema(), job_here_sql("j")),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	*(int64 *) arg = spi_get_int64(0, 1);
}

/* a claimed job: its id (0: none), its row's origin (in cxt) and table */
typedef struct Claim
{
	MemoryContext cxt;
	int64		job_id;
	char	   *origin;
	Oid			job_table;
} Claim;

/*
 * Take the oldest queued job nobody else runs: its row locked SKIP LOCKED,
 * its advisory lock taken for the life of the run, its state 'running'.
 */
static void
claim_job(void *arg)
{
	Claim	   *claim = (Claim *) arg;
	int64	   *job_id = &claim->job_id;
	char	   *schema;
	uint64		n;
	int64	   *ids;
	char	  **origins;
	bool		installed;

	*job_id = 0;
	/* dropped while the worker ran a job: nothing queued */
	check_installed(&installed);
	if (!installed)
		return;
	schema = dedup_ext_schema();
	spi_exec_as_owner(psprintf("SELECT job_id, %s FROM %s.dedup_job j WHERE state OPERATOR(pg_catalog.=) 'queued'"
							   " AND %s ORDER BY job_id FOR UPDATE OF j SKIP LOCKED",
							   job_has_column(schema, "origin") ? "origin::pg_catalog.text" : "NULL::pg_catalog.text",
							   schema, job_here_sql("j")),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	n = SPI_processed;
	ids = palloc(sizeof(int64) * (n + 1));
	origins = palloc(sizeof(char *) * (n + 1));
	for (uint64 i = 0; i < n; i++)
	{
		ids[i] = spi_get_int64(i, 1);
		origins[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
	}
	for (uint64 i = 0; i < n && *job_id == 0; i++)
		if (job_lock_try(ids[i]))
		{
			Oid			types[2] = {INT8OID, INT4OID};
			Datum		values[2] = {Int64GetDatum(ids[i]), Int32GetDatum(MyProcPid)};

			/* this run's start, from which dedup_progress counts its speed (1.6) */
			const char *run = job_has_column(schema, "run_started_at") ?
				", run_started_at = pg_catalog.clock_timestamp(), rows_before_run = rows_done" : "";

			spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET state = 'running', worker_pid = $2,"
									   " started_at = COALESCE(started_at, pg_catalog.clock_timestamp()),"
									   " updated_at = pg_catalog.clock_timestamp()%s"
									   " WHERE job_id OPERATOR(pg_catalog.=) $1", schema, run),
							  2, types, values, NULL, SPI_OK_UPDATE);
			*job_id = ids[i];
			claim->origin = origins[i] ? MemoryContextStrdup(claim->cxt, origins[i]) : NULL;
			claim->job_table = job_table();
		}
}

static void
any_queued(void *arg)
{
	check_installed(arg);
	if (!*(bool *) arg)
		return;
	spi_exec_as_owner(psprintf("SELECT FROM %s.dedup_job j WHERE state OPERATOR(pg_catalog.=) 'queued' AND %s LIMIT 1",
							   dedup_ext_schema(), job_here_sql("j")),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	*(bool *) arg = SPI_processed > 0;
}

/* "SQLSTATE: message", then detail and hint, as a client would see them */
static char *
error_text(ErrorData *edata)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
	if (edata->detail)
		appendStringInfo(&buf, "\nDETAIL: %s", edata->detail);
	if (edata->hint)
		appendStringInfo(&buf, "\nHINT: %s", edata->hint);
	if (edata->context)
		appendStringInfo(&buf, "\nCONTEXT: %s", edata->context);
	return buf.data;
}

typedef struct FailArg
{
	int64		job_id;
	const char *origin;
	Oid			job_table;
	const char *error;
} FailArg;

/*
 * Fail the job with its error, unless its row is gone or another job's
 * (job_row_is_ours): then there is nothing of it left to fail.
 */
static void
fail_job(void *arg)
{
	FailArg    *f = (FailArg *) arg;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(f->job_id), CStringGetTextDatum(f->error)};
	DedupJob   *job;
	bool		ours = OidIsValid(f->job_table) && job_table() == f->job_table;

	if (ours)
	{
		spi_exec_as_owner(psprintf("SELECT FROM %s.dedup_job j WHERE %s FOR UPDATE", dedup_ext_schema(),
								   job_row_is_ours(f->job_id, f->origin)),
						  0, NULL, NULL, NULL, SPI_OK_SELECT);
		ours = SPI_processed == 1;
	}
	if (!ours)
	{
		ereport(LOG,
				(errmsg("dedup_ext: job %lld no longer exists; its worker leaves it", (long long) f->job_id)));
		return;
	}
	job = job_fetch(f->job_id, true, false);

	job_drop_work_table(f->job_id, job->work_table);
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET state = 'failed', error = $2, control = NULL,"
							   " worker_pid = NULL, finished_at = pg_catalog.clock_timestamp(),"
							   " updated_at = pg_catalog.clock_timestamp()%s"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1", dedup_ext_schema(),
							   job_drop_unused_archive(job)),
					  2, types, values, NULL, SPI_OK_UPDATE);
	archive_close(f->job_id);
}

/* who submitted the job, and what it is (as the superuser the worker is) */
static void
identify_job(void *arg)
{
	BgJob	   *job = (BgJob *) arg;
	DedupJob   *row = job_fetch(job->job_id, false, false);

	job->submitter = row->submitted_by;
	job->relid = row->relid;
	job->kind = MemoryContextStrdup(job->cxt, row->kind);
	if (strcmp(row->kind, "backfill") == 0)
		job->parent = (Oid) strtoul(job_param(row, "parent_oid"), NULL, 10);
}

static int
param_int(DedupJob *row, const char *name, int dflt)
{
	char	   *v = job_param(row, name);

	return v ? pg_strtoint32(v) : dflt;
}

static char *
copy_or_null(BgJob *job, const char *s)
{
	return s ? MemoryContextStrdup(job->cxt, s) : NULL;
}

/*
 * A job that has not run a batch yet: an archive whose table's columns
 * changed since the submission is made again, still empty (archive_renew).
 * Here, in the transaction that reads the job and holds its table, so
 * that what the worker knows of the table is what the new archive has.
 */
static void
renew_archive(BgJob *job)
{
	char	   *renewed = archive_renew(job->relid, job->archive_table, job->job_id);

	if (renewed == NULL)
		return;
	ereport(LOG,
			(errmsg("dedup_ext job %lld: the columns of %s changed since the job was submitted; its archive is made again, as %s",
					(long long) job->job_id, job->t->qualname, renewed)));
	bg_record(job, psprintf("archive_table = %s", sql_literal(renewed)));
	/* load_job reads it again should this transaction not commit */
	job->archive_table = MemoryContextStrdup(job->cxt, renewed);
}

/*
 * Load the job as its submitter: the table is opened and validated again,
 * ownership included, exactly as at submit time.
 */
static void
load_job(BgJob *job, void *arg)
{
	DedupJob   *row = job_fetch(job->job_id, false, true);
	MemoryContext oldcxt;
	char	   *filter;
	char	   *keep;
	char	   *action;
	ArrayType  *key;
	bool		nulls_distinct;

	job_require_here(row);
	job_apply_settings(row, false);
	job->batch_size = param_int(row, "batch_rows", dedup_batch_size);
	job->batch_delay = param_int(row, "batch_delay", dedup_batch_delay);
	job->lock_timeout = param_int(row, "lock_timeout", dedup_lock_timeout);
	job->phase = copy_or_null(job, row->phase);
	job->control = copy_or_null(job, row->control);
	job->checkpoint = row->checkpoint;
	job->passes = row->passes;
	job->rows_total = row->rows_total;
	job->rows_done = row->rows_done;
	job->rows_changed = row->rows_changed;
	job->batches_done = row->batches_done;
	job->work = copy_or_null(job, row->work_table);
	job->archive_table = copy_or_null(job, row->archive_table);
	if (row->started)
		progress_resumed(row->started_at, row->rows_done);
	if (strcmp(job->kind, "dedup") != 0)
	{
		bg_backfill_load(job, row);
		return;
	}

	/* read the parameters first: SPI leaves its own memory context current */
	filter = job_param(row, "filter_sql");
	keep = job_param(row, "keep_sql");
	key = job_param_array(row, "key");
	nulls_distinct = strcmp(job_param(row, "nulls_distinct"), "true") == 0;
	action = job_param(row, "action");
	job->add_unique = strcmp(job_param(row, "add_unique"), "true") == 0;

	oldcxt = MemoryContextSwitchTo(job->cxt);
	job->t = dedup_target_open(job->relid, key, filter ? cstring_to_text(filter) : NULL,
							   nulls_distinct, true, AccessShareLock);
	dedup_target_set_keep(job->t, keep);
	job->nspname = get_namespace_name(get_rel_namespace(job->relid));
	job->action = dedup_parse_action(action);
	if (job->action == DEDUP_ACTION_RENAME)
		dedup_target_set_rename(job->t);
	job->strategy = "delete";
	if (row->unique_index)
	{
		Oid			idx = dedup_relid_by_name(row->unique_index);

		job->index_name = OidIsValid(idx) ? get_rel_name(idx) : NULL;
		job->is_constraint = row->unique_is_constraint;
	}
	MemoryContextSwitchTo(oldcxt);
	dedup_refuse_cascades(job->t, job->action);
	if (row->batches_done == 0 && job->archive_table)
		renew_archive(job);
}

/* Run a claimed job: its kind's phases, from where it stands. */
static void
bg_run(BgJob *job)
{
	plain_xact(identify_job, job);
	progress_begin(job->job_id, job->kind, job->relid, job->submitter, false);
	while (!bg_xact(job, load_job, NULL))
		if (bg_obeyed(job))
			return;
	if (strcmp(job->kind, "dedup") == 0)
		bg_dedup(job);
	else
		bg_backfill(job);
}

/* Run one claimed job to its end (done, failed, cancelled) or to a pause. */
static void
run_job(Claim *claim)
{
	int64		job_id = claim->job_id;
	MemoryContext cxt = claim->cxt;
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	CpuYieldReport yields;
	BgJob	   *job = palloc0(sizeof(BgJob));

	job->job_id = job_id;
	job->origin = claim->origin;
	job->job_table = claim->job_table;
	job->cxt = cxt;
	job->loser_share = -1;
	PG_TRY();
	{
		bg_run(job);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		FailArg		f;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		EmitErrorReport();
		FlushErrorState();
		bg_abort();
		MemoryContextSwitchTo(cxt);
		/* set outside a transaction around an index build: not undone by the abort */
		bg_compress_wal(false);
		RESUME_INTERRUPTS();
		if (bg_may_have_guards(job))
			bg_drop_guards_quietly(job);
		f.job_id = job_id;
		f.origin = claim->origin;
		f.job_table = claim->job_table;
		f.error = error_text(edata);
		plain_xact(fail_job, &f);
	}
	PG_END_TRY();
	progress_end();
	job_unlock(job_id);
	cpu_yield_report(&yields);
	if (yields.naps > 0 || yields.naps_for_waiters > 0)
		elog(DEBUG1, "dedup_ext job %lld: gave the CPU %lld times, %lld ms in all, to processes waiting for one;"
			 " its batches napped %lld ms against %lld ms on a CPU, and did not nap %lld times for writers waiting for them",
			 (long long) job_id, (long long) yields.naps, (long long) yields.slept_ms,
			 (long long) yields.batches_slept_ms, (long long) yields.batches_cpu_ms,
			 (long long) yields.naps_for_waiters);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(cxt);
}

/*
 * Lower the worker's CPU priority to nice.  setpriority() alone is not
 * enough where the kernel groups processes by session for scheduling
 * (autogroup, kernel.sched_autogroup_enabled, on in Debian's kernels): there
 * a nice value ranks a process only against the others of its session, and
 * every child of the postmaster, this worker included, starts a session of
 * its own.  The worker would then compete with each backend as an equal.
 * So the session's own priority is lowered as well; the session holds the
 * worker alone.  A kernel without autogroup has no /proc/self/autogroup.
 */
static void
lower_cpu_priority(int nice)
{
	if (setpriority(PRIO_PROCESS, 0, nice) != 0)
		ereport(WARNING,
				(errmsg("dedup_ext worker could not lower its CPU priority: %m")));

	/*
	 * The kernel takes one such change every 100 ms from the whole machine
	 * (EAGAIN otherwise), and workers often start together.
	 */
	for (int attempt = 1;; attempt++)
	{
		FILE	   *autogroup = AllocateFile("/proc/self/autogroup", "w");
		bool		written;

		if (autogroup == NULL)
		{
			if (errno == ENOENT)
				return;
			break;
		}
		/* the write happens at the flush, in FreeFile */
		written = fprintf(autogroup, "%d", nice) >= 0;
		if (FreeFile(autogroup) == 0 && written)
			return;
		if (errno != EAGAIN || attempt == 10)
			break;
		pg_usleep(100 * 1000L);
	}
	ereport(WARNING,
			(errmsg("dedup_ext worker could not lower the CPU priority of its session: %m")));
}

/*
 * dedup_ext.worker_sched_idle: the SCHED_IDLE policy, under which the kernel
 * runs the worker only on CPU time no other process wants, puts a woken
 * process on the worker's CPU as on an idle one, and preempts the worker at
 * once.  Where autogroup scheduling reaches the worker (PostgreSQL started
 * from a login session, in the root cpu cgroup), the worker's session
 * competes as a whole: woken processes are still put on the worker's CPU,
 * and wait there (worse than nice alone, bench/HISTORY.md).  Without
 * CAP_SYS_NICE a process cannot leave SCHED_IDLE, so it holds for the
 * worker's whole life, its batches and their row locks included: off by
 * default.
 */
static void
take_idle_policy(void)
{
#ifdef SCHED_IDLE
	struct sched_param param = {0};

	if (sched_setscheduler(0, SCHED_IDLE, &param) != 0)
		ereport(WARNING,
				(errmsg("dedup_ext worker could not take the SCHED_IDLE scheduling policy: %m")));
	else
		elog(DEBUG1, "dedup_ext worker runs at the SCHED_IDLE scheduling policy");
#else
	ereport(WARNING,
			(errmsg("dedup_ext.worker_sched_idle is not supported on this platform")));
#endif
}

/* the database's worker slot this worker holds, -1 when none */
static int	held_slot = -1;
/* SIGTERM came: pg_terminate_backend, or the server shutting down */
static volatile sig_atomic_t terminate_requested = false;

static void
worker_sigterm(SIGNAL_ARGS)
{
	terminate_requested = true;
	die(postgres_signal_arg);
}

/*
 * A worker stopped by pg_terminate_backend while it held a slot leaves its
 * job interrupted, for dedup_resume; the jobs queued behind it would wait
 * for a worker nothing starts, as the other workers take the next job only
 * when theirs ends.  So a new worker is started for the database (the
 * postmaster starts none while it shuts down).  Not after any other error:
 * one that would end the new worker too would start workers in a loop.
 * on_shmem_exit runs after the session's advisory locks, the slot's among
 * them, are released: the new worker finds the slot free (or nothing
 * queued, and leaves).
 */
static void
replace_on_exit(int code, Datum arg)
{
	if (terminate_requested && held_slot >= 0)
		launch_workers(1);
}

/*
 * Main of a dynamic worker: arg is the database; bgw_extra[0] is its mode
 * (launch_worker in launcher.c).  The worker takes one of
 * the database's dedup_ext.max_workers slots (or leaves: the workers that have
 * them take the queued jobs), runs queued jobs until none is left, gives its
 * slot back, and looks once more, so that a job queued while it was leaving
 * is not left without a worker.
 */
void
dedup_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	char		mode = MyBgworkerEntry->bgw_extra[0];
	MemoryContext cxt;
	bool		installed = false;

	pqsignal(SIGTERM, worker_sigterm);
	/* settings such as dedup_ext.wal_compression apply from the next step */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	GetUserIdAndSecContext(&worker_user, &worker_sec);
	pgstat_report_appname("dedup_ext worker");
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_SESSION);
	/* row ids hold float keys as text: exact (the functions' own setting) */
	SetConfigOption("extra_float_digits", "1", PGC_SUSET, PGC_S_SESSION);

	/*
	 * In a deadlock with a writer, the batch gives way.  PostgreSQL rolls
	 * back the session that finds the deadlock, and a waiting session looks
	 * once, after its deadlock_timeout (1 s by default).  A batch that
	 * closes a cycle looks after 10 ms, and is retried.  When a writer
	 * closes it, the batch has been waiting longer, and its lock_timeout
	 * ends it first (if dedup_ext.lock_timeout is no longer than the
	 * writers' deadlock_timeout).
	 */
	SetConfigOption("deadlock_timeout", "10ms", PGC_SUSET, PGC_S_SESSION);
	/*
	 * A background job takes one CPU at most, at a lower priority
	 * (dedup_ext.worker_nice); with dedup_ext.worker_yield on, its passes
	 * and batches also give the CPU to the processes waiting for one
	 * (cpu_yield.c).
	 */
	SetConfigOption("max_parallel_workers_per_gather", "0", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("max_parallel_maintenance_workers", "0", PGC_SUSET, PGC_S_SESSION);
	if (dedup_worker_nice > 0)
		lower_cpu_priority(dedup_worker_nice);
	if (dedup_worker_sched_idle)
		take_idle_policy();
	cpu_yield_hook_executor();

	/*
	 * No JIT: a batch's statements run for tens of milliseconds, but the
	 * planner's costs of their per-row subqueries pass jit_above_cost, and
	 * compiling them took as long as running them (each batch, as each
	 * batch plans its statements afresh).
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_SESSION);
	cxt = AllocSetContextCreate(TopMemoryContext, "dedup_ext job", ALLOCSET_DEFAULT_SIZES);

	plain_xact(check_installed, &installed);
	if (!installed)
		proc_exit(0);
	on_shmem_exit(replace_on_exit, (Datum) 0);
	if (mode == 'r')
		plain_xact(requeue_lost, NULL);
	if (mode == 'r' || mode == 'q')
	{
		int64		queued = 0;

		plain_xact(count_queued, &queued);
		/* once committed, more workers take them: they run side by side */
		if (Min(queued, (int64) dedup_max_workers) > 1)
			launch_workers((int) Min(queued, (int64) dedup_max_workers) - 1);
	}

	for (;;)
	{
		int			slot = worker_slot_take();
		bool		more = false;
		bool		ran = false;

		if (slot < 0)
			break;
		held_slot = slot;
		for (;;)
		{
			Claim		claim = {cxt, 0, NULL, InvalidOid};

			/* dedup_ext.max_workers lowered since: this slot is gone */
			reload_config();
			if (slot >= dedup_max_workers)
				break;
			plain_xact(claim_job, &claim);
			if (claim.job_id == 0)
				break;
			run_job(&claim);
			ran = true;
		}
		worker_slot_release(slot);
		held_slot = -1;
		plain_xact(any_queued, &more);
		if (!more)
			break;

		/*
		 * Queued jobs, none of which it could claim: their rows are locked
		 * (a session pausing or cancelling one, its transaction still open,
		 * or prepared).  Look again in a second, not at once: that spun.
		 */
		if (!ran)
			bg_sleep(1000);
	}
	proc_exit(0);
}
