/*
 * dedup_ext.h
 *		Declarations shared by the files of dedup_ext.
 *
 * The flow of every call: args.c validates the arguments into a DedupTarget
 * (everything generated SQL needs to know about the relation and the key),
 * sqlgen.c turns a DedupTarget into SQL fragments, and audit.c / dedup.c /
 * rollback.c run those as whole-table statements through SPI (archive.c
 * creates the archives they write).  jobs.c keeps the job rows.  Every per-row step is a set-based statement whose executor
 * spills to disk as needed; the one scan in C, candidates.c's key hashes,
 * keeps its pairs within maintenance_work_mem by scanning again (and its
 * result within work_mem, spilling).
 */
#ifndef DEDUP_EXT_H
#define DEDUP_EXT_H

#include "postgres.h"

#include "catalog/pg_class.h"
#include "compat.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "storage/lockdefs.h"
#include "utils/array.h"
#include "utils/timestamp.h"

/* GUCs (dedup_ext.c) */
extern int	dedup_batch_size;
extern int	dedup_batch_delay;
extern int	dedup_lock_timeout;
extern int	dedup_max_workers;
extern int	dedup_worker_nice;
extern bool dedup_wal_compression;
extern bool dedup_worker_yield;
extern bool dedup_worker_sched_idle;

typedef enum DedupAction
{
	DEDUP_ACTION_DELETE,
	DEDUP_ACTION_RENAME,
	DEDUP_ACTION_MERGE
} DedupAction;

typedef enum DedupStrategy
{
	DEDUP_STRATEGY_AUTO,
	DEDUP_STRATEGY_DELETE,
	DEDUP_STRATEGY_REWRITE
} DedupStrategy;

/* One column the generated SQL refers to. */
typedef struct DedupColumn
{
	char	   *name;			/* as in the catalog */
	char	   *quoted;			/* quote_identifier(name) */
	Oid			type;
	Oid			eq_opr;			/* the type's default equality operator */
	char	   *eq_sql;			/* "OPERATOR(schema.=)" for eq_opr */
	bool		bytewise_eq;	/* a string type under a deterministic collation
								 * other than "C": its values are equal exactly
								 * when their bytes are, so grouping under
								 * COLLATE "C" finds the same groups faster */
} DedupColumn;

/* A validated relation + key + options; built by args.c. */
typedef struct DedupTarget
{
	Oid			relid;
	Oid			relowner;
	char	   *relname;		/* unquoted, for messages and archive names */
	char	   *qualname;		/* "schema"."table", quoted */
	int			nkeys;
	DedupColumn *keys;
	int			npk;			/* 0: no primary key, ctid identifies rows */
	DedupColumn *pk;
	char	   *filter_text;	/* the caller's filter, as given (NULL: none) */
	char	   *filter_r;		/* deparsed, columns qualified with alias r */
	char	   *filter_bare;	/* deparsed, unqualified (index predicates) */
	Node	   *filter_expr;	/* parsed, on the table as range table entry 1 */
	bool		filter_immutable;	/* usable as an index predicate */
	bool		nulls_distinct;
	char	   *order_r;		/* keep order + tie-breaker, alias r */
	char	   *keep_sql;		/* 'first', 'last', or the list deparsed, qualified */
	char		keep_extreme;	/* keep 'first' ('f') or 'last' ('l'); 0: an ORDER BY list */
	bool		few_groups;		/* most rows are duplicates (estimated, or
								 * counted by auto) */
	char	   *keep_groups;	/* counted_loser_share's temporary table of
								 * groups, for the rewrite, or NULL */
	char	   *candidates_fn;	/* dedup_key_candidates, qualified, when the
								 * passes that look for duplicates read only
								 * the rows it returns; NULL: all rows */
	int			rename_key;		/* index into keys of the renamed column, or -1 */
} DedupTarget;

/* args.c */
extern void dedup_require_arg(FunctionCallInfo fcinfo, int argno, const char *argname);
extern DedupTarget *dedup_target_open_as(Oid relid, ArrayType *key, text *filter, bool nulls_distinct,
										 bool check_owner, LOCKMODE lockmode,
										 const char *relarg, const char *keyarg);
extern DedupTarget *dedup_target_open(Oid relid, ArrayType *key, text *filter,
									  bool nulls_distinct, bool check_owner,
									  LOCKMODE lockmode);
extern void dedup_target_set_keep(DedupTarget *t, const char *keep);
extern void dedup_target_set_rename(DedupTarget *t);
extern DedupAction dedup_parse_action(const char *action);
extern const char *dedup_action_name(DedupAction action);
extern DedupStrategy dedup_parse_strategy(const char *strategy);
extern void dedup_check_owner(Oid relid);
extern Oid	dedup_relid_by_name(const char *qualified);
/*
 * The foreign keys that reference table $1 (an oid): name, referencing
 * table, its columns, the referenced columns and the equality operators;
 * the caller adds conditions and ORDER BY.
 * fk_keys() reads the arrays of one row.
 */
#define SQL_REFERENCING_FKS \
	"SELECT c.conname::pg_catalog.text, c.conrelid, c.conkey, c.confkey, c.conpfeqop" \
	" FROM pg_catalog.pg_constraint c" \
	" WHERE c.contype OPERATOR(pg_catalog.=) 'f' AND c.confrelid OPERATOR(pg_catalog.=) $1"
extern int	fk_keys(HeapTuple tup, TupleDesc desc, Datum **conkey, Datum **confkey, Datum **eqops);
extern char *fk_collate(Oid parent, AttrNumber pattnum, Oid child, AttrNumber cattnum);
/* a row that a foreign key references: which key, of which table, and how */
typedef struct ReferencedRow
{
	char	   *conname;		/* quoted */
	char	   *child;			/* qualified, quoted */
	char	   *key;			/* "(a, b)=(1, 2)" */
} ReferencedRow;
extern bool referenced_row(Oid relid, const char *qualname, const char *rows, bool deferred_only,
						   bool together, ReferencedRow *found);
extern void references_immediate(Oid relid);
extern void own_constraints_immediate(Oid relid);
extern void refuse_referenced_rows(Oid relid, const char *qualname, const char *what,
								   const char *rows, bool deferred_only, bool together,
								   const char *hint);
extern char *enabled_rule(Oid relid, char ev_type);
extern void dedup_target_require_sort(DedupTarget *t, const char *fn);
extern void refuse_cascading_references(Oid relid, const char *qualname, const char *what,
										bool on_delete, AttrNumber att, const char *hint);
/* the hint of a delete refused for the references to its rows */
#define HINT_MERGE_REFERENCES \
	"Use action => 'merge', which points the referencing rows at the survivor before it removes the losers."
#define HINT_KEEP_ORPHANS \
	"Use on_orphan => 'report' or 'create_parent', which keep the orphans."
extern char *sql_operator(Oid opno);
extern Oid	get_rel_owner(Oid relid);
extern bool has_before_delete_trigger(Oid relid);
extern FormData_pg_class rel_class(Oid relid);
extern char *sql_type(Oid type);

/* sqlgen.c */
extern char *sql_key_list(DedupTarget *t, const char *alias);
extern char *sql_partition_list(DedupTarget *t, const char *alias);
extern char *sql_key_json(DedupTarget *t, const char *alias);
extern char *sql_row_id(DedupTarget *t, const char *alias);
extern char *sql_rows_where(DedupTarget *t, bool with_filter);
extern char *sql_any_key_null(DedupTarget *t, const char *alias);
extern const char *sql_null_test(Oid type, bool is_null);
extern char *sql_keys_match(DedupTarget *t, const char *a, const char *b);
extern char *sql_pk_list(DedupTarget *t, const char *alias);
extern char *sql_pk_match(DedupTarget *t, const char *a, const char *b);
extern char *sql_ranked(DedupTarget *t, const char *extra_cols);
extern char *sql_ranked_dups(DedupTarget *t, const char *extra_cols);
extern const char *sql_keep_column(DedupTarget *t);
extern char *sql_group_keep(DedupTarget *t);
extern char *sql_losers(DedupTarget *t);
extern char *sql_loser_groups(DedupTarget *t);
extern char *sql_rename_cols(DedupTarget *t);
extern char *sql_rename_ctes(DedupTarget *t, const char *source);
extern char *sql_rename_apply(DedupTarget *t, const char *src, const char *ctidcol,
							  const char *archive, int64 job_id);
extern char *sql_literal(const char *s);

/* candidates.c */
extern bool dedup_type_hashable(Oid type);
extern void dedup_target_plan_candidates(DedupTarget *t, double loser_share);
extern void candidates_remember_next(Oid relid, MemoryContext parent);
extern bool candidates_remembered(Oid relid);
extern void candidates_keep_remembered(void);
extern void candidates_confirm_next(Oid relid, ItemPointerData *losers, int64 nlosers);
extern void candidates_disarm(void);

/* cpu_yield.c */
#define CPU_YIELD_STRIDE 64
extern int	cpu_yield_calls;
extern void cpu_yield_arm(bool holds_row_locks);
extern void cpu_yield_disarm(void);
extern void cpu_yield_now(void);
extern void cpu_yield_check(void);
typedef struct CpuYieldReport
{
	int64		naps;			/* times the worker gave way */
	int64		slept_ms;		/* for so long in all */
	int64		batches_slept_ms;	/* of which in batches */
	int64		batches_cpu_ms;	/* the batches' CPU time */
	int64		naps_for_waiters;	/* times a batch did not nap: a writer
									 * waited for it */
} CpuYieldReport;
extern void cpu_yield_report(CpuYieldReport *report);
extern void cpu_yield_hook_executor(void);

/*
 * In the CPU-bound loops of a pass and in a worker's plan nodes, about once
 * per row: in an armed background worker, gives the CPU to waiting
 * processes now and then.
 * Unarmed it costs a load and a test.
 */
static inline void
cpu_yield_point(void)
{
	if (cpu_yield_calls > 0 && --cpu_yield_calls == 0)
		cpu_yield_check();
}

/* spi.c */
extern char *spi_temp_table_name(const char *what);
extern int64 spi_exec_count(const char *sql, int expected);
extern int64 spi_exec_count_no_nestloop(const char *sql, int expected);
extern int64 spi_get_int64(int row, int col);
extern void spi_query_to_srf(FunctionCallInfo fcinfo, const char *sql);
extern void spi_rethrow_with_hint(MemoryContext cxt, int code, int code2, const char *hint,
								  bool drop_context);

/* rewrite.c */
extern const char *rewrite_obstacle(DedupTarget *t);
extern double estimated_loser_share(DedupTarget *t, bool may_analyze, bool may_sample);
extern double counted_loser_share(DedupTarget *t, bool keep_groups, bool count_rows);
extern char *run_rewrite(DedupTarget *t, int64 job_id, bool archive,
						 int64 *groups, int64 *deleted);

/* merge.c */
typedef struct MergeResult
{
	int64		groups;
	int64		rows_deleted;
	int64		refs_repointed;
	int64		refs_removed;	/* referencing rows removed as collisions */
	char	   *ref_archives;	/* jsonb: the archives of re-pointed tables */
} MergeResult;

typedef struct MergePlan MergePlan;

extern void run_merge(DedupTarget *t, int64 job_id, const char *archive, bool archived,
					  bool background, MergeResult *res);
extern MergePlan *merge_plan(DedupTarget *t, bool lock_children, bool archive);
extern char *merge_archives(MergePlan *plan, int64 job_id, const char *known);
extern char *merge_map_columns(MergePlan *plan);
extern void merge_refs(MergePlan *plan, const char *map, int64 job_id, MergeResult *res);
extern int64 merge_delete_losers(DedupTarget *t, const char *map, int64 job_id,
								 const char *archive);

/* undo_chain.c: what a rollback gives back to a row the job changed more than once */
typedef struct UndoLog UndoLog;
typedef char *(*UndoAliasSql) (const UndoLog *log, const char *x, const char *y);
typedef char *(*UndoKeySql) (const UndoLog *log, const char *x);
struct UndoLog
{
	const char *table;			/* qualified: the table the job changed */
	const char *archive;		/* qualified: its entries, one per change */
	const char *action;			/* their dedup_action */
	const char *through;		/* or NULL: the dedup_action of entries whose
								 * archived value the row went back with */
	const char *needs_nothing;	/* or NULL: row c needs nothing when true */
	UndoKeySql	row_key;		/* "x.id, ...", a row's key */
	UndoAliasSql same_row;		/* x and y are the same row */
	UndoAliasSql left_at;		/* x holds the value entry y gave its row */
	UndoAliasSql same_value;	/* x holds the value archived in entry y */
	const void *arg;			/* for the callbacks */
};

extern char *archive_last_entries(const char *archive, const char *where, const char *key);
extern char *undo_last_entries(const UndoLog *log);
extern char *undo_values_before(const UndoLog *log);
extern int64 undo_count_changed(const UndoLog *log);

/* jobs.c */

/* pg_advisory_xact_lock(DEDUP_SUBMIT_LOCK, table oid): background submissions of a table, one at a time */
#define DEDUP_SUBMIT_LOCK 1684302192
typedef struct DedupJob
{
	int64		job_id;
	char	   *kind;
	Oid			relid;
	char	   *state;
	Oid			submitted_by;
	char	   *params;			/* jsonb as text */
	int64		rows_deleted;
	int64		rows_renamed;
	char	   *archive_table;	/* qualified, or NULL */
	char	   *unique_index;	/* qualified, or NULL */
	bool		unique_is_constraint;
	int64		rolled_back_by; /* 0: not rolled back */
	char	   *ref_archives;	/* jsonb text, merge only */
	int64		refs_removed;	/* a merge's collisions removed */
	int64		refs_repointed; /* and rows re-pointed */
	char	   *undo;			/* jsonb text, backfill only */
	/* background jobs */
	bool		background;
	char	   *phase;			/* where the worker is (or resumes) */
	int64		checkpoint;		/* last work-table row a committed batch did */
	int			passes;			/* scans of the table so far */
	char	   *work_table;		/* qualified, or NULL */
	char	   *control;		/* 'pause', 'cancel' or NULL */
	int64		rows_total;
	int64		rows_done;
	int64		rows_changed;
	int64		batches_done;
	int64		groups;
	int64		retries;
	bool		started;		/* started_at is set */
	TimestampTz started_at;
	bool		created_here;	/* inserted by the current transaction */
	bool		here;			/* written in this database, not restored (job_here_sql) */
} DedupJob;

extern char *dedup_ext_schema(void);
extern Oid	dedup_ext_namespace(void);
extern Oid	dedup_ext_owner(void);
extern int64 job_create(const char *kind, const char *phase, Oid relid, const char *relname,
						const char *params_json, int64 target_job);
extern void job_finish(int64 job_id, const char *strategy, int64 groups,
					   int64 rows_deleted, int64 rows_renamed, int64 rows_changed,
					   const char *archive_table, const char *unique_index,
					   bool unique_is_constraint);
extern void job_note_index(int64 job_id, const char *index);
extern void job_mark_rolled_back(int64 job_id, int64 rollback_job_id);
extern void job_set_undo(int64 job_id, const char *undo_json);
extern void job_set_refs(int64 job_id, int64 refs_repointed, int64 refs_removed,
						 const char *ref_archives);
extern DedupJob *job_fetch(int64 job_id, bool for_update, bool control);
extern void job_require_here(DedupJob *job);
extern char *job_origin_sql(int64 job_id);
extern bool job_has_column(const char *schema, const char *column);
extern const char *job_here_sql(const char *alias);
extern int64 spi_exec_as(Oid role, const char *sql, int nargs, Oid *types, Datum *values,
						 const char *nulls, int expected);
extern int64 spi_exec_as_owner(const char *sql, int nargs, Oid *types, Datum *values,
							   const char *nulls, int expected);
extern char *job_param(DedupJob *job, const char *name);
extern char *json_field_text(const char *json, const char *name);
extern void job_settings_json(StringInfo buf);
extern const char *job_drop_unused_archive(DedupJob *job);
extern void job_apply_settings(DedupJob *job, bool local);
extern ArrayType *job_param_array(DedupJob *job, const char *name);
extern int64 job_submit(const char *kind, Oid relid, const char *relname,
						 const char *params_json, bool merge, Oid parent);
extern void job_refuse_temp(Oid relid);
extern bool job_act_as_submitter(DedupJob *job, Oid *saved_user, int *saved_sec);
extern void job_act_as_caller(Oid saved_user, int saved_sec);
extern void job_drop_work_table(int64 job_id, const char *work_table);
extern void job_drop_restored_work_table(int64 job_id, const char *work_table);
extern void job_set_archive(int64 job_id, const char *archive_table);

/* worker.c, batch.c: a background job as its worker runs it */
typedef struct BgJob
{
	int64		job_id;
	char	   *origin;			/* its row's origin (1.5), as text, or NULL */
	Oid			job_table;		/* the dedup_job it was claimed from */
	MemoryContext cxt;			/* lives as long as the run */
	Oid			submitter;
	char	   *kind;
	Oid			relid;
	Oid			parent;			/* a backfill's parent table, else InvalidOid */
	int			batch_size;
	int			batch_delay;
	int			lock_timeout;
	int64		retries;		/* retried steps not yet recorded */
	/* as of the last commit */
	char	   *control;
	char	   *phase;
	int64		checkpoint;
	int			passes;
	int64		rows_total;
	int64		rows_done;
	int64		rows_changed;
	int64		batches_done;
	/* dedup */
	DedupTarget *t;
	DedupAction action;
	bool		add_unique;
	const char *strategy;
	char	   *archive_table;
	char	   *work;			/* the work table, qualified */
	int64		pass_rows;		/* work rows of the current pass */
	int64		pass_changed_from;	/* rows_changed when it began, -1: unknown */
	double		loser_share;	/* estimated by the run's first pass, or -1 */
	TimestampTz first_scan_ended;	/* when the run's first scan ended, or 0 */
	char	   *index_name;		/* add_unique: unqualified */
	char	   *nspname;		/* the table's schema */
	bool		is_constraint;
	/* backfill (backfill.c's own state) */
	struct BgBackfill *backfill;
} BgJob;

extern bool bg_xact(BgJob *job, void (*step) (BgJob *job, void *arg), void *arg);
extern void bg_xact_always(BgJob *job, void (*step) (BgJob *job, void *arg), void *arg);
extern void bg_abort(void);
extern void bg_toplevel(BgJob *job, const char *sql);
extern void bg_compress_wal(bool on);
extern void bg_sleep(int ms);
extern void bg_delay(BgJob *job);
extern void bg_record(BgJob *job, const char *assignments);
extern void bg_publish(BgJob *job);
extern bool bg_control_requested(BgJob *job);
extern bool bg_obeyed(BgJob *job);
extern void bg_finish(BgJob *job);
extern void bg_dedup(BgJob *job);
extern void bg_backfill(BgJob *job);
extern void bg_backfill_load(BgJob *job, DedupJob *row);
extern void backfill_drop_constraints(DedupJob *job);
extern bool column_not_null(Oid relid, AttrNumber att);

/* launcher.c */
extern void launch_at_commit(void);
extern void launch_workers(int n);
extern TimestampTz launcher_started_at(void);
extern void launcher_register(void);

/* control.c */
extern bool job_lock_try(int64 job_id);
extern void job_unlock(int64 job_id);
extern int	worker_slot_take(void);
extern void worker_slot_release(int slot);
extern char *job_effective_state(int64 job_id);

/* progress.c */
extern void progress_init(void);
extern void progress_begin(int64 job_id, const char *kind, Oid relid, Oid userid, bool foreground);
extern void progress_phase(const char *phase);
extern void progress_counts(int64 rows_total, int64 rows_done, int64 rows_changed,
							int64 batches_done);
extern void progress_resumed(TimestampTz started_at, int64 rows_before_run);
extern bool progress_job_visible(int64 job_id);
extern void progress_end(void);

/* archive.c */

extern char *archive_name(const char *relname, int64 job_id, const char *tag);
extern void archive_check_columns(Oid relid, const char *archive, int64 job_id);
extern char *archive_renew(Oid relid, const char *archive, int64 job_id);
extern bool archive_drop_if_empty_quietly(const char *archive);
extern char *archive_adopt(Oid heap, Oid relid, int64 job_id);
extern bool archive_drop_if_empty(const char *archive);
extern char *archive_xact_value(const char *archive);
extern int	archive_table_natts(TupleDesc desc);
extern void archive_refuse_own_names(Oid relid);
extern void archive_close(int64 job_id);
extern void archive_counts(const char *archive, const char *changed, int64 *deleted, int64 *nchanged);
extern void archive_backfill_counts(DedupJob *job, int64 have[3], int64 want[3]);
extern void archive_require_intact(const char *archive, int64 job_id, Oid relid, Oid writer);
extern char *archive_create(Oid relid, int64 job_id, const char *tag, Oid writer,
							List *only);

/* rollback.c */
extern char *key_archive_match(Oid archive, const char *c, const char *x, const char *except);
extern Oid	job_unique_index(DedupJob *job, DedupTarget *t, bool *gone);

/* unique.c */
extern char *unique_index_name(DedupTarget *t, bool *is_constraint);
extern char *unique_index_sql(DedupTarget *t, const char *name, bool concurrently);
extern char *unique_constraint_sql(DedupTarget *t, const char *name);
extern char *unique_create(DedupTarget *t, bool *is_constraint);
extern char *unique_existing(DedupTarget *t);

/* guard.c */
extern bool index_flags(Oid idx, bool *ready, bool *valid);
extern void guard_keep_step(BgJob *job, void *arg);
extern bool bg_may_have_guards(BgJob *job);
extern void bg_drop_guards(BgJob *job);
extern void bg_drop_guards_quietly(BgJob *job);
extern void guards_drop(int64 job_id, Oid relid, const char *unique_index);

/* dedup.c */
extern void rename_refusals(DedupTarget *t, int64 null_keys, const char *taken);
extern void rename_stored_check(DedupTarget *t, int64 changed);
extern void rename_skipped_check(DedupTarget *t, int64 renamed, int64 wanted);
extern void losers_deleted_check(DedupTarget *t, int64 deleted, int64 nlosers);
extern void dedup_refuse_cascades(DedupTarget *t, DedupAction action);

/* the SQL-callable functions */
extern Datum backfill_fk(PG_FUNCTION_ARGS);
extern Datum dedup_audit(PG_FUNCTION_ARGS);
extern Datum dedup_groups(PG_FUNCTION_ARGS);
extern Datum dedup_preview(PG_FUNCTION_ARGS);
extern Datum dedup_table(PG_FUNCTION_ARGS);
extern Datum dedup_rollback(PG_FUNCTION_ARGS);
extern Datum dedup_verify(PG_FUNCTION_ARGS);

#endif							/* DEDUP_EXT_H */
