/*
 * undo_chain.c
 *		Which value a rollback gives back to a row that a job changed more
 *		than once.
 *
 * A background rename or merge works in passes while the application keeps
 * writing, so one row can be changed by the job, then by a writer, then by
 * the job again: its archive holds one entry per change, each with the
 * value the row had before that change and the value the job gave it.  The
 * value before the job is the first entry's only when the entries form an
 * unbroken chain (each one's old value is the value the previous one gave);
 * where a writer's change breaks it, the writer's value is what goes back.
 * Walking the chain newest first, from the row's current value, finds that.
 */
#include "dedup_ext.h"

#include "executor/spi.h"
#include "utils/lsyscache.h"

/*
 * The entries of archive a newest first, as they were written: by
 * dedup_xact, then (within a transaction, or in an archive without it) by
 * ctid.
 */
static const char *
newest_first(const char *archive)
{
	if (get_attnum(dedup_relid_by_name(archive), "dedup_xact") != InvalidAttrNumber)
		return "a.dedup_xact DESC, a.ctid DESC";
	return "a.ctid DESC";
}

/* the entries of the log's actions */
static char *
entries_where(const UndoLog *log)
{
	if (log->through)
		return psprintf("a.dedup_action OPERATOR(pg_catalog.=) ANY (ARRAY[%s, %s])",
						sql_literal(log->action), sql_literal(log->through));
	return psprintf("a.dedup_action OPERATOR(pg_catalog.=) %s", sql_literal(log->action));
}

/*
 * x holds the value entry y left its row with: the value y's change gave
 * it, or for an entry of the log's through action, the value y archived
 * (the row went back with it)
 */
static char *
left_with(const UndoLog *log, const char *x, const char *y)
{
	if (log->through)
		return psprintf("(CASE WHEN %s.dedup_action OPERATOR(pg_catalog.=) %s THEN (%s) ELSE (%s) END)",
						y, sql_literal(log->through), log->same_value(log, x, y), log->left_at(log, x, y));
	return log->left_at(log, x, y);
}

/*
 * The newest entry of every row in archive whose entries match where (alias
 * a), rows told apart by key ("a.id, ..."): a subquery
 */
char *
archive_last_entries(const char *archive, const char *where, const char *key)
{
	return psprintf("(SELECT DISTINCT ON (%s) a.* FROM %s a WHERE %s ORDER BY %s, %s)",
					key, archive, where, key, newest_first(archive));
}

/* the newest entry of every row the job changed */
char *
undo_last_entries(const UndoLog *log)
{
	return archive_last_entries(log->archive, entries_where(log), log->row_key(log, "a"));
}

/* " AND NOT (needs_nothing)" on row c, or "" */
static char *
unless_needs_nothing(const UndoLog *log)
{
	return log->needs_nothing ? psprintf(" AND NOT (%s)", log->needs_nothing) : "";
}

/*
 * For every row of the table that still holds the value the job's last
 * change left it with (and that needs_nothing does not spare), the entry
 * whose archived value goes back: a subquery with the archive's columns.
 * The walk starts at the row's newest entry and steps to the one before
 * while that one gave the value the later one found (dedup_undo_step counts
 * the entries of a row, newest first).  A walk that ends at an entry of the
 * through action has nothing to set back: the row went back with that
 * entry's value already.
 */
char *
undo_values_before(const UndoLog *log)
{
	char	   *key = log->row_key(log, "a");

	return psprintf("(SELECT * FROM (WITH RECURSIVE dedup_e AS ("
					"SELECT a.*, pg_catalog.row_number() OVER (PARTITION BY %s ORDER BY %s) AS dedup_undo_step"
					" FROM %s a WHERE %s),"
					" dedup_walk AS ("
					"SELECT e.* FROM dedup_e e WHERE e.dedup_undo_step OPERATOR(pg_catalog.=) 1"
					" AND EXISTS (SELECT FROM ONLY %s c WHERE %s AND %s%s)"
					" UNION ALL SELECT e.* FROM dedup_walk p JOIN dedup_e e ON %s"
					" AND e.dedup_undo_step OPERATOR(pg_catalog.=) (p.dedup_undo_step OPERATOR(pg_catalog.+) 1)"
					" WHERE %s)"
					" SELECT DISTINCT ON (%s) a.* FROM dedup_walk a ORDER BY %s, a.dedup_undo_step DESC) a"
					" WHERE a.dedup_action OPERATOR(pg_catalog.=) %s)",
					key, newest_first(log->archive), log->archive, entries_where(log),
					log->table, log->same_row(log, "c", "e"), left_with(log, "c", "e"),
					unless_needs_nothing(log),
					log->same_row(log, "p", "e"), left_with(log, "p", "e"),
					key, key, sql_literal(log->action));
}

/*
 * How many rows the job changed hold a value that is neither the one its
 * last change left them with nor one they had before any of its changes:
 * someone else changed them since, and a rollback would overwrite that.  A
 * row that holds an archived old value was set back by hand (or by a
 * writer) and needs nothing, as does one that needs_nothing spares.
 */
int64
undo_count_changed(const UndoLog *log)
{
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c, %s l WHERE %s AND NOT (%s)%s"
							" AND NOT EXISTS (SELECT FROM %s a WHERE %s AND %s AND %s)",
							log->table, undo_last_entries(log), log->same_row(log, "c", "l"),
							left_with(log, "c", "l"), unless_needs_nothing(log),
							log->archive, entries_where(log), log->same_row(log, "c", "a"),
							log->same_value(log, "c", "a")),
				   SPI_OK_SELECT);
	return spi_get_int64(0, 1);
}
