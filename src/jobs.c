/*
 * jobs.c
 *		The job rows in dedup_job.
 *
 * dedup_job is not writable by users: a job row is written here, by the C
 * code, as the owner of the extension (SetUserIdAndSecContext for the
 * duration of one statement), so that a role can neither forge nor alter
 * jobs, yet every job row is written in the caller's transaction and
 * disappears with it on ROLLBACK.  Users read the dedup_jobs view, which
 * shows each role its own jobs.
 */
#include "dedup_ext.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/comment.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

/*
 * Where the extension lives and who owns it, read from pg_extension by its
 * name's index in one lookup (the C code asks before nearly every statement
 * it builds, a worker before every step: a catalog lookup, not a query);
 * false when it is not installed.  get_extension_schema() is not exported
 * before PostgreSQL 16.
 */
static bool
extension_info(Oid *nspid, Oid *owner)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("dedup_ext"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	found = HeapTupleIsValid(tuple);
	if (found && nspid)
		*nspid = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	if (found && owner)
		*owner = ((Form_pg_extension) GETSTRUCT(tuple))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static void
extension_required(bool found)
{
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"dedup_ext\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION dedup_ext.")));
}

/* the OID of the extension's schema; InvalidOid when it is not installed */
Oid
dedup_ext_namespace(void)
{
	Oid			nspid;

	return extension_info(&nspid, NULL) ? nspid : InvalidOid;
}

/* quoted name of the extension's schema */
char *
dedup_ext_schema(void)
{
	Oid			nspid;
	char	   *name;

	extension_required(extension_info(&nspid, NULL));
	name = get_namespace_name(nspid);
	if (name == NULL)
		elog(ERROR, "dedup_ext: schema %u of the extension not found", nspid);
	return pstrdup(quote_identifier(name));
}

/* the owner of the extension and of its objects */
Oid
dedup_ext_owner(void)
{
	Oid			owner;

	extension_required(extension_info(NULL, &owner));
	return owner;
}

/*
 * Execute one statement as the extension owner.  An error aborts the
 * transaction (or subtransaction), which restores the user id.
 */
int64
spi_exec_as_owner(const char *sql, int nargs, Oid *types, Datum *values,
				  const char *nulls, int expected)
{
	return spi_exec_as(dedup_ext_owner(), sql, nargs, types, values, nulls, expected);
}

/* spi_exec_as_owner, as role (in a security-restricted context too) */
int64
spi_exec_as(Oid role, const char *sql, int nargs, Oid *types, Datum *values,
			const char *nulls, int expected)
{
	Oid			saved_user;
	int			saved_sec;
	int			ret;

	GetUserIdAndSecContext(&saved_user, &saved_sec);
	SetUserIdAndSecContext(role,
						   saved_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	SetUserIdAndSecContext(saved_user, saved_sec);
	if (ret != expected)
		elog(ERROR, "dedup_ext: unexpected SPI result %s for: %s",
			 SPI_result_code_string(ret), sql);
	return (int64) SPI_processed;
}

/*
 * Has dedup_job this column?  A database may still be at an older version
 * than the library: where its rows were written came with 1.5 (origin),
 * when a job's run began with 1.6 (run_started_at).
 */
bool
job_has_column(const char *schema, const char *column)
{
	return get_attnum(dedup_relid_by_name(psprintf("%s.dedup_job", schema)), column) != InvalidAttrNumber;
}

static bool
job_has_origin(const char *schema)
{
	return job_has_column(schema, "origin");
}

/*
 * SQL that is true for a row j of dedup_job written in this database: its
 * origin is noted in dedup_job_here (1.5), whose rows pg_dump leaves out.  A
 * database still at 1.4 or older has no origin: all its rows are its own as
 * far as it can tell.
 */
const char *
job_here_sql(const char *alias)
{
	char	   *schema = dedup_ext_schema();

	if (!job_has_origin(schema))
		return "true";
	return psprintf("EXISTS (SELECT FROM %s.dedup_job_here x WHERE x.job_id OPERATOR(pg_catalog.=) %s.job_id"
					" AND x.origin OPERATOR(pg_catalog.=) %s.origin)", schema, alias, alias);
}

/*
 * Insert a job row: columns and values (the same number, $n for the
 * arguments) RETURNING job_id; from 1.5 on with a new random origin, noted
 * in dedup_job_here by the same statement.  Whether the column is there is
 * asked under the lock the INSERT takes, so that an ALTER EXTENSION UPDATE
 * that adds it is seen.  spi_exec_as_owner's arguments; returns the job's id.
 */
static int64
job_insert(const char *columns, const char *values_sql, int nargs, Oid *types, Datum *values,
		   const char *nulls)
{
	char	   *schema = dedup_ext_schema();
	char	   *insert;

	LockRelationOid(dedup_relid_by_name(psprintf("%s.dedup_job", schema)), RowExclusiveLock);
	if (!job_has_origin(schema))
		insert = psprintf("INSERT INTO %s.dedup_job (%s) VALUES (%s) RETURNING job_id",
						  schema, columns, values_sql);
	else
		insert = psprintf("WITH j AS (INSERT INTO %s.dedup_job (%s, origin) VALUES (%s, pg_catalog.gen_random_uuid())"
						  " RETURNING job_id, origin)"
						  " INSERT INTO %s.dedup_job_here SELECT j.job_id, j.origin FROM j RETURNING job_id",
						  schema, columns, values_sql, schema);
	spi_exec_as_owner(insert, nargs, types, values, nulls, SPI_OK_INSERT_RETURNING);
	return spi_get_int64(0, 1);
}

/*
 * The origin of job job_id, as SQL, for the rows of dedup_orphan it lists;
 * NULL before 1.5
 */
char *
job_origin_sql(int64 job_id)
{
	char	   *schema = dedup_ext_schema();

	if (!job_has_origin(schema))
		return NULL;
	return psprintf("(SELECT j.origin FROM %s.dedup_job j WHERE j.job_id OPERATOR(pg_catalog.=) %lld)",
					schema, (long long) job_id);
}

/*
 * A data-only restore into a database that has jobs of its own sets the
 * job id sequence back to the dump's value (its job rows themselves fail on
 * the ids taken): every job submitted then would fail on the primary key
 * until the sequence passed them.  Move it past the highest id first.
 */
static void
job_ids_ahead(void)
{
	char	   *schema = dedup_ext_schema();

	spi_exec_as_owner(psprintf("SELECT pg_catalog.setval(%s::pg_catalog.regclass, x.m)"
							   " FROM (SELECT pg_catalog.max(j.job_id) AS m FROM %s.dedup_job j) x,"
							   " %s.dedup_job_job_id_seq s WHERE x.m OPERATOR(pg_catalog.>) s.last_value"
							   " OR (x.m OPERATOR(pg_catalog.=) s.last_value AND NOT s.is_called)",
							   sql_literal(psprintf("%s.dedup_job_job_id_seq", schema)), schema, schema),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
}

/*
 * A background worker is a session of its own: it cannot read the temporary
 * tables of the session that submits the job.  Refused at submission.
 */
void
job_refuse_temp(Oid relid)
{
	if (get_rel_persistence(relid) == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot run a background job on temporary table %s", get_rel_name(relid)),
				 errdetail("The job would run in a background worker, which cannot read another session's temporary tables."),
				 errhint("Use background => false.")));
}

/* the error context of a call acting with another role's rights */
static ErrorContextCallback acting_context;
static int	acting_depth;		/* calls acting for another role, nested */
static int64 acting_job;
static char acting_role[NAMEDATALEN];
static bool acting_owner;

/* errors say with whose rights the superuser's call acted */
static void
acting_context_callback(void *arg)
{
	errcontext("job %lld, acted on with the rights of role %s (%s)", (long long) acting_job,
			   acting_role,
			   acting_owner ? "its table's owner: its submitter no longer exists, or owns it no more" : "its submitter");
}

/* is the context already on the stack (a rollback run inside another's trigger)? */
static bool
acting_context_pushed(void)
{
	for (ErrorContextCallback *e = error_context_stack; e; e = e->previous)
		if (e == &acting_context)
			return true;
	return false;
}

/*
 * A superuser acting on another role's job (dedup_rollback, dedup_verify)
 * does it with that role's rights, as the job ran, in a security-restricted
 * context: what the role made (a filter's function, a trigger, a type's
 * cast) runs as that role, not as the superuser.  The table's owner's
 * rights when the role was dropped since, or no longer owns the table (ALTER
 * TABLE ... OWNER TO: as the role, nothing could be rolled back or
 * verified any more).  *saved_user and *saved_sec get
 * the caller's, for job_act_as_caller before returning (an error's abort
 * restores them itself).  Returns whether it acts as the table's owner
 * instead of the submitter.
 */
bool
job_act_as_submitter(DedupJob *job, Oid *saved_user, int *saved_sec)
{
	Oid			role = job->submitted_by;
	bool		owner = false;

	GetUserIdAndSecContext(saved_user, saved_sec);
	if (role == *saved_user || !superuser())
		return false;
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)) ||
		(SearchSysCacheExists1(RELOID, ObjectIdGetDatum(job->relid)) &&
		 !has_privs_of_role(role, get_rel_owner(job->relid))))
	{
		owner = true;
		role = get_rel_owner(job->relid);
	}
	SetUserIdAndSecContext(role, *saved_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);

	/*
	 * One static context, pushed by the outermost call (an error's abort
	 * takes it off the stack, and the count starts again)
	 */
	if (!acting_context_pushed())
		acting_depth = 0;
	if (acting_depth++ > 0)
		return owner;
	acting_job = job->job_id;
	acting_owner = owner;
	strlcpy(acting_role, GetUserNameFromId(role, false), NAMEDATALEN);
	acting_context.callback = acting_context_callback;
	acting_context.arg = NULL;
	acting_context.previous = error_context_stack;
	error_context_stack = &acting_context;
	return owner;
}

/* back to the caller's rights, after job_act_as_submitter */
void
job_act_as_caller(Oid saved_user, int saved_sec)
{
	/* job_act_as_submitter changed nothing: neither rights nor context */
	if (GetUserId() == saved_user)
		return;
	SetUserIdAndSecContext(saved_user, saved_sec);
	if (acting_depth > 0 && --acting_depth == 0)
	{
		/* off the stack, wherever it is on it */
		for (ErrorContextCallback **e = &error_context_stack; *e; e = &(*e)->previous)
			if (*e == &acting_context)
			{
				*e = acting_context.previous;
				break;
			}
	}
}

/*
 * A foreground job's row, and its slot in dedup_progress (preloaded), shown
 * to other sessions in its first phase until the caller moves it on.
 */
int64
job_create(const char *kind, const char *phase, Oid relid, const char *relname,
		   const char *params_json, int64 target_job)
{
	Oid			types[6] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, OIDOID, INT8OID};
	Datum		values[6];
	char		nulls[7] = "      ";
	int64		job_id;

	values[0] = CStringGetTextDatum(kind);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = CStringGetTextDatum(relname);
	values[3] = CStringGetTextDatum(params_json);
	values[4] = ObjectIdGetDatum(GetUserId());
	values[5] = Int64GetDatum(target_job);
	if (target_job == 0)
		nulls[5] = 'n';
	job_ids_ahead();
	job_id = job_insert("kind, relation, relation_name, params, state, submitted_by, started_at, target_job",
						"$1, $2, $3, $4::pg_catalog.jsonb, 'running', $5, pg_catalog.clock_timestamp(), $6",
						6, types, values, nulls);
	progress_begin(job_id, kind, relid, GetUserId(), true);
	progress_phase(phase);
	return job_id;
}

/*
 * The background job in progress that matches which (a condition on j), if
 * any, into SPI_tuptable (job_id, relation, action): read under the latest
 * snapshot, not the caller's, which under REPEATABLE READ may predate a
 * submission committed while it waited for the lock.
 */
static void
job_in_progress(const char *which)
{
	Oid			saved_user;
	int			saved_sec;
	SPIPlanPtr	plan;
	int			ret;

	GetUserIdAndSecContext(&saved_user, &saved_sec);
	SetUserIdAndSecContext(dedup_ext_owner(),
						   saved_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	plan = SPI_prepare(psprintf("SELECT j.job_id, j.relation, j.params OPERATOR(pg_catalog.->>) 'action'"
								" FROM %s.dedup_job j WHERE j.background AND (%s)"
								" AND j.state OPERATOR(pg_catalog.=) ANY ('{queued,running,paused}'::pg_catalog.text[])"
								" AND %s ORDER BY j.job_id LIMIT 1", dedup_ext_schema(), which, job_here_sql("j")),
					   0, NULL);
	ret = plan ? SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1) : -1;
	SetUserIdAndSecContext(saved_user, saved_sec);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read the jobs in progress");
}

/* a job's table may have been dropped while the job waits */
static char *
qualified_relname(Oid relid)
{
	char	   *name = get_rel_name(relid);

	if (name == NULL)
		return psprintf("a dropped table (OID %u)", relid);
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), name);
}

/* "SELECT <col> FROM pg_catalog.pg_constraint c WHERE" foreign keys between two tables "AND c.<side> = relid" */
static char *
fks_of(const char *col, const char *side, Oid relid)
{
	return psprintf("SELECT %s FROM pg_catalog.pg_constraint c WHERE c.contype OPERATOR(pg_catalog.=) 'f'"
					" AND c.conrelid OPERATOR(pg_catalog.<>) c.confrelid AND c.%s OPERATOR(pg_catalog.=) %u",
					col, side, relid);
}

/* the error for a job in progress (SPI_tuptable of job_in_progress) that the submission must not run beside */
static void
refuse_beside(const char *what, Oid relid)
{
	int64		other = spi_get_int64(0, 1);
	bool		isnull;
	Oid			otherrel = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg(what, (long long) other, qualified_relname(otherrel), qualified_relname(relid)),
			 errdetail("A background merge re-points the rows that reference its table, and a background backfill links rows to its parent's; a background job on the other table meanwhile would change rows the first one archives or links to, and neither could be rolled back before the other."),
			 errhint("Wait for it with dedup_wait(%lld); its submitter (or a superuser) can cancel it with dedup_cancel(%lld).",
					 (long long) other, (long long) other)));
}

/*
 * Nor may background jobs run at once on two tables where one changes rows
 * the other's rows point to: a merge on a table and a job on one with a
 * foreign key to it (the merge re-points that table's rows), a backfill and
 * a dedup of its parent (the backfill links to parents the dedup removes or
 * renames).  merge: the submission is a merge; parent: a backfill's.
 */
static void
job_refuse_related(Oid relid, bool merge, Oid parent)
{
	job_in_progress(psprintf("j.params OPERATOR(pg_catalog.->>) 'action' OPERATOR(pg_catalog.=) 'merge'"
							 " AND j.relation OPERATOR(pg_catalog.=) ANY (%s)",
							 fks_of("c.confrelid", "conrelid", relid)));
	if (SPI_processed > 0)
		refuse_beside("background job %lld merges rows of %s, which %s references", relid);
	if (merge)
	{
		job_in_progress(psprintf("j.relation OPERATOR(pg_catalog.=) ANY (%s)", fks_of("c.conrelid", "confrelid", relid)));
		if (SPI_processed > 0)
			refuse_beside("background job %lld runs on %s, which references %s", relid);
	}
	if (OidIsValid(parent))
	{
		job_in_progress(psprintf("j.kind OPERATOR(pg_catalog.=) 'dedup' AND j.relation OPERATOR(pg_catalog.=) %u",
								 parent));
		if (SPI_processed > 0)
			refuse_beside("background job %lld deduplicates %s, the parent table of a backfill of %s", relid);
	}
	else
	{
		job_in_progress(psprintf("j.kind OPERATOR(pg_catalog.=) 'backfill'"
								 " AND (j.params OPERATOR(pg_catalog.->>) 'parent_oid')::pg_catalog.oid OPERATOR(pg_catalog.=) %u",
								 relid));
		if (SPI_processed > 0)
			refuse_beside("background job %lld backfills %s from %s, its parent table", relid);
	}
}

/*
 * The submission locks (advisory, to the end of the transaction) of table
 * relid, of the tables it references and of a backfill's parent, in OID
 * order: a submission on any of them queues behind this transaction, so
 * that the checks above see every job submitted before.
 */
static void
lock_submissions(Oid relid, Oid parent)
{
	spi_exec_count(psprintf("SELECT pg_catalog.pg_advisory_xact_lock(%d, o::pg_catalog.int4)"
							" FROM (SELECT %u::pg_catalog.oid UNION SELECT %u::pg_catalog.oid UNION %s) x(o)"
							" WHERE o OPERATOR(pg_catalog.<>) 0 ORDER BY o",
							(int) DEDUP_SUBMIT_LOCK, relid, parent, fks_of("c.confrelid", "conrelid", relid)),
				   SPI_OK_SELECT);
}

/*
 * Queue a background job: its row commits with the caller's transaction,
 * and a worker starts when it does.
 */
int64
job_submit(const char *kind, Oid relid, const char *relname, const char *params_json, bool merge,
		   Oid parent)
{
	Oid			types[5] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, OIDOID};
	Datum		values[5];
	int64		job_id;

	job_refuse_temp(relid);
	if (!job_has_column(dedup_ext_schema(), "background"))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("background jobs need dedup_ext 1.1 or later; this database has 1.0"),
				 errhint("Run ALTER EXTENSION dedup_ext UPDATE.")));

	/*
	 * One background job per table at a time: two would race to build the
	 * same unique index (CREATE INDEX CONCURRENTLY waits for the other's
	 * snapshot: a deadlock), and each would archive what the other left.
	 * Submissions of the same table queue behind one another's transaction.
	 */
	lock_submissions(relid, parent);
	job_in_progress(psprintf("j.relation OPERATOR(pg_catalog.=) %u", relid));
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("table %s has background job %lld in progress",
						quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), relname),
						(long long) spi_get_int64(0, 1)),
				 errdetail("One background job runs on a table at a time."),
				 errhint("Wait for it with dedup_wait(%lld); its submitter (or a superuser) can cancel it with dedup_cancel(%lld).",
						 (long long) spi_get_int64(0, 1), (long long) spi_get_int64(0, 1))));
	job_refuse_related(relid, merge, parent);

	values[0] = CStringGetTextDatum(kind);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = CStringGetTextDatum(relname);
	values[3] = CStringGetTextDatum(params_json);
	values[4] = ObjectIdGetDatum(GetUserId());
	job_ids_ahead();
	job_id = job_insert("kind, relation, relation_name, params, state, submitted_by, background",
						"$1, $2, $3, $4::pg_catalog.jsonb, 'queued', $5, true",
						5, types, values, NULL);
	launch_at_commit();
	return job_id;
}

/* a background job's archive exists from its submission on */
void
job_set_archive(int64 job_id, const char *archive_table)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(job_id), CStringGetTextDatum(archive_table)};

	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET archive_table = $2"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1", dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_UPDATE);
}

/* a background job that ends drops its work table (work_table may be NULL) */
void
job_drop_work_table(int64 job_id, const char *work_table)
{
	if (work_table == NULL)
		return;
	spi_exec_as_owner(psprintf("DROP TABLE IF EXISTS %s", work_table),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET work_table = NULL WHERE job_id OPERATOR(pg_catalog.=) %lld",
							   dedup_ext_schema(), (long long) job_id),
					  0, NULL, NULL, NULL, SPI_OK_UPDATE);
}

/*
 * The same for a job restored from a dump, whose row's name of its work
 * table is trusted only if the table there says, in its comment (batch.c),
 * that it is that job's work list.
 */
void
job_drop_restored_work_table(int64 job_id, const char *work_table)
{
	Oid			relid = work_table ? dedup_relid_by_name(work_table) : InvalidOid;
	char	   *comment = OidIsValid(relid) ? GetComment(relid, RelationRelationId, 0) : NULL;
	char	   *says = psprintf("dedup_ext: work list of background job %lld,", (long long) job_id);

	if (comment != NULL && strncmp(comment, says, strlen(says)) == 0)
		job_drop_work_table(job_id, work_table);
}

void
job_finish(int64 job_id, const char *strategy, int64 groups,
		   int64 rows_deleted, int64 rows_renamed, int64 rows_changed,
		   const char *archive_table, const char *unique_index,
		   bool unique_is_constraint)
{
	Oid			types[9] = {INT8OID, TEXTOID, INT8OID, INT8OID, INT8OID, TEXTOID, TEXTOID, BOOLOID,
	INT8OID};
	Datum		values[9];
	char		nulls[10] = "         ";

	values[0] = Int64GetDatum(job_id);
	values[1] = strategy ? CStringGetTextDatum(strategy) : (Datum) 0;
	values[2] = Int64GetDatum(groups);
	values[3] = Int64GetDatum(rows_deleted);
	values[4] = Int64GetDatum(rows_renamed);
	values[5] = archive_table ? CStringGetTextDatum(archive_table) : (Datum) 0;
	values[6] = unique_index ? CStringGetTextDatum(unique_index) : (Datum) 0;
	values[7] = BoolGetDatum(unique_is_constraint);
	values[8] = Int64GetDatum(rows_changed);
	if (!strategy)
		nulls[1] = 'n';
	if (!archive_table)
		nulls[5] = 'n';
	if (!unique_index)
		nulls[6] = 'n';
	/* done: it leaves dedup_progress, though the caller's transaction goes on */
	progress_end();
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET state = 'done',"
							   " finished_at = pg_catalog.clock_timestamp(),"
							   " strategy = $2, duplicate_groups = $3,"
							   " rows_deleted = $4, rows_renamed = $5,"
							   " rows_done = $9, rows_changed = $9,"
							   " archive_table = $6, unique_index = $7,"
							   " unique_is_constraint = $8"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1",
							   dedup_ext_schema()),
					  9, types, values, nulls, SPI_OK_UPDATE);
	if (unique_index)
		job_note_index(job_id, unique_index);
}

void
job_mark_rolled_back(int64 job_id, int64 rollback_job_id)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2] = {Int64GetDatum(job_id), Int64GetDatum(rollback_job_id)};

	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET rolled_back_by = $2"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1",
							   dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_UPDATE);
}

void
job_set_refs(int64 job_id, int64 refs_repointed, int64 refs_removed, const char *ref_archives)
{
	Oid			types[4] = {INT8OID, INT8OID, INT8OID, TEXTOID};
	Datum		values[4] = {Int64GetDatum(job_id), Int64GetDatum(refs_repointed),
	Int64GetDatum(refs_removed), ref_archives ? CStringGetTextDatum(ref_archives) : (Datum) 0};
	char		nulls[5] = "    ";

	if (!ref_archives)
		nulls[3] = 'n';
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET refs_repointed = $2, refs_removed = $3,"
							   " ref_archives = $4::pg_catalog.jsonb,"
							   " rows_changed = rows_changed OPERATOR(pg_catalog.+) $2 OPERATOR(pg_catalog.+) $3"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1",
							   dedup_ext_schema()),
					  4, types, values, nulls, SPI_OK_UPDATE);
}

void
job_set_undo(int64 job_id, const char *undo_json)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(job_id), CStringGetTextDatum(undo_json)};

	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET undo = $2::pg_catalog.jsonb"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1", dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_UPDATE);
}

static char *
get_text(int col)
{
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);
}

/*
 * Read a job.  A role sees its own jobs; superusers and members of
 * pg_read_all_stats see all; control (rollback, cancel...) is for the
 * submitter and superusers only.  for_update locks the job row, so that two
 * sessions cannot, say, roll back the same job twice.
 */
DedupJob *
job_fetch(int64 job_id, bool for_update, bool control)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};
	DedupJob   *job;
	char	   *s;
	bool		own;
	bool		isnull;

	spi_exec_as_owner(psprintf("SELECT job_id, kind, relation, state, submitted_by, params::pg_catalog.text,"
							   " rows_deleted, rows_renamed, archive_table, unique_index,"
							   " unique_is_constraint, rolled_back_by, ref_archives::pg_catalog.text,"
							   " undo::pg_catalog.text, background, phase, checkpoint, passes::pg_catalog.int8, work_table,"
							   " control, rows_total, rows_done, rows_changed, batches_done,"
							   " duplicate_groups, started_at, xmin::pg_catalog.text, retries, %s,"
							   " refs_removed, refs_repointed"
							   " FROM %s.dedup_job j WHERE job_id OPERATOR(pg_catalog.=) $1%s",
							   job_here_sql("j"), dedup_ext_schema(), for_update ? " FOR UPDATE OF j" : ""),
					  1, types, values, NULL, SPI_OK_SELECT);

	job = palloc0(sizeof(DedupJob));
	if (SPI_processed == 1)
	{
		job->job_id = job_id;
		job->kind = get_text(2);
		job->relid = (Oid) strtoul(get_text(3), NULL, 10);
		job->state = get_text(4);
		job->submitted_by = (Oid) strtoul(get_text(5), NULL, 10);
		job->params = get_text(6);
		job->rows_deleted = spi_get_int64(0, 7);
		job->rows_renamed = spi_get_int64(0, 8);
		job->archive_table = get_text(9);
		job->unique_index = get_text(10);
		s = get_text(11);
		job->unique_is_constraint = s && s[0] == 't';
		job->rolled_back_by = spi_get_int64(0, 12);
		job->ref_archives = get_text(13);
		job->undo = get_text(14);
		s = get_text(15);
		job->background = s && s[0] == 't';
		job->phase = get_text(16);
		job->checkpoint = spi_get_int64(0, 17);
		job->passes = (int) spi_get_int64(0, 18);
		job->work_table = get_text(19);
		job->control = get_text(20);
		job->rows_total = spi_get_int64(0, 21);
		job->rows_done = spi_get_int64(0, 22);
		job->rows_changed = spi_get_int64(0, 23);
		job->batches_done = spi_get_int64(0, 24);
		job->groups = spi_get_int64(0, 25);
		/* as a value: its text depends on DateStyle and TimeZone (job_apply_settings) */
		job->started_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
															26, &isnull));
		job->started = !isnull;
		job->created_here = TransactionIdIsCurrentTransactionId((TransactionId) strtoul(get_text(27), NULL, 10));
		job->retries = spi_get_int64(0, 28);
		s = get_text(29);
		job->here = s && s[0] == 't';
		job->refs_removed = spi_get_int64(0, 30);
		job->refs_repointed = spi_get_int64(0, 31);
	}

	/*
	 * A restored row's submitted_by is a role OID of the database it was
	 * written in: here it may be another role's.
	 */
	own = job->job_id != 0 && ((job->here && job->submitted_by == GetUserId()) || superuser());
	if (job->job_id == 0 && progress_job_visible(job_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld is a foreground job still in progress", (long long) job_id),
				 errdetail("Its row commits with the transaction that runs it; until then no other session can act on it."),
				 errhint("Wait for that transaction to end, or end it (pg_cancel_backend of the pid dedup_progress shows).")));
	if (job->job_id == 0 ||
		(!own && !has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) job_id),
				 errhint("dedup_jobs lists the jobs you can see.")));
	if (control && !own && !job->here)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be superuser to control job %lld", (long long) job_id),
				 errdetail("Job %lld was restored from a dump of another database, where its submitter's role is not known.",
						   (long long) job_id)));
	if (control && !own)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be the submitter of job %lld", (long long) job_id),
				 errdetail("Job %lld was submitted by role %s.", (long long) job_id,
						   GetUserNameFromId(job->submitted_by, true))));
	return job;
}

/*
 * A restored job's row names its table, indexes and archived rows by OIDs
 * and ctids of the database it ran in; here they are other objects, or
 * nothing.  Refuse to act on them.
 */
void
job_require_here(DedupJob *job)
{
	if (!job->here)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld was restored from a dump of another database", (long long) job->job_id),
				 errdetail("Its row names the table, indexes and rows it changed by object identifiers and row positions of the database it ran in; here they name other objects, or nothing."),
				 errhint("Its archive tables (dedup_jobs.archive_table, ref_archives) hold the rows it removed or changed as they were (see the README's \"Backups\"), or drop them with dedup_drop_archive(%lld).",
						 (long long) job->job_id)));
}

/*
 * A background dedup that ends (cancelled, failed) before its first batch
 * leaves no empty archive: ", archive_table = NULL" for the job's row when
 * it dropped it, else "".  In a subtransaction: a reader's view on the
 * archive keeps it (DROP fails), and the job still ends.
 */
const char *
job_drop_unused_archive(DedupJob *job)
{
	if (strcmp(job->kind, "dedup") != 0 || job->archive_table == NULL || job->batches_done != 0)
		return "";
	return archive_drop_if_empty_quietly(job->archive_table) ? ", archive_table = NULL" : "";
}

/* one top-level field of the job's params, as text (NULL if absent or null) */
char *
job_param(DedupJob *job, const char *name)
{
	return json_field_text(job->params, name);
}

/*
 * The settings that change what an expression computes from the same row
 * or its text: a background job's filter and keep (extract(hour FROM ts)
 * and ts::date depend on TimeZone, d::text on DateStyle), a rename's suffix
 * (the primary key's text) and a backfill's key comparisons across types.
 * The worker evaluates them as the submitting session did.
 */
static const char *const session_settings[] = {
	"DateStyle", "IntervalStyle", "TimeZone", "timezone_abbreviations", "lc_monetary", "lc_numeric",
	"lc_time", "default_text_search_config", "bytea_output", "xmloption"
};

/* "settings": the session's values of session_settings, for a background job's params */
void
job_settings_json(StringInfo buf)
{
	appendStringInfoString(buf, ", \"settings\": {");
	for (int i = 0; i < lengthof(session_settings); i++)
	{
		if (i > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, session_settings[i]);
		appendStringInfoString(buf, ": ");
		escape_json(buf, GetConfigOption(session_settings[i], false, false));
	}
	appendStringInfoChar(buf, '}');
}

/*
 * Before a job's expressions are parsed: the settings of the session that
 * submitted it.  In a worker (local false) for the rest of the session:
 * those a job submitted before they were kept does not name are reset to
 * the worker's own.  local (dedup_verify): in the caller's GUC nest level,
 * which its AtEOXact_GUC ends; a job that kept none changes nothing.
 */
void
job_apply_settings(DedupJob *job, bool local)
{
	char	   *settings = job_param(job, "settings");

	if (settings == NULL && local)
		return;
	for (int i = 0; i < lengthof(session_settings); i++)
		(void) set_config_option(session_settings[i],
								 settings ? json_field_text(settings, session_settings[i]) : NULL,
								 PGC_SUSET, PGC_S_SESSION, local ? GUC_ACTION_SAVE : GUC_ACTION_SET,
								 true, 0, false);
}

/* one top-level field of a jsonb text, as text (NULL if absent or null) */
char *
json_field_text(const char *json, const char *name)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(json), CStringGetTextDatum(name)};

	if (SPI_execute_with_args("SELECT $1::pg_catalog.jsonb OPERATOR(pg_catalog.->>) $2",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read job parameters");
	return get_text(1);
}

/* a text[] field of the job's params */
ArrayType *
job_param_array(DedupJob *job, const char *name)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(job->params), CStringGetTextDatum(name)};
	bool		isnull;
	Datum		d;

	if (SPI_execute_with_args("SELECT ARRAY(SELECT pg_catalog.jsonb_array_elements_text("
							  "$1::pg_catalog.jsonb OPERATOR(pg_catalog.->) $2))",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read job parameters");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return DatumGetArrayTypePCopy(d);
}

/*
 * Note the identity of the unique index job_id built, now that it exists
 * (dedup_rollback drops that index whatever its name is then, and never one
 * that took its name).  A database still at 1.2 has no column for it.
 */
void
job_note_index(int64 job_id, const char *index)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(job_id), CStringGetTextDatum(index)};

	if (get_attnum(dedup_relid_by_name(psprintf("%s.dedup_job", dedup_ext_schema())),
				   "unique_index_oid") == InvalidAttrNumber)
		return;
	spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET unique_index_oid = pg_catalog.to_regclass($2)"
							   " WHERE job_id OPERATOR(pg_catalog.=) $1", dedup_ext_schema()),
					  2, types, values, NULL, SPI_OK_UPDATE);
}
