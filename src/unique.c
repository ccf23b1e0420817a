/*
 * unique.c
 *		add_unique: the unique index that keeps duplicates from coming back.
 *
 * The index is built first (CREATE UNIQUE INDEX takes a SHARE lock, which
 * lets readers in) and then, when it can be one, attached as a table
 * constraint (ADD CONSTRAINT ... USING INDEX is a catalog change only), so
 * INSERT ... ON CONFLICT (key) and ON CONFLICT ON CONSTRAINT both work.  With
 * a filter it stays a partial unique index, which ON CONFLICT (key) WHERE
 * <filter> infers.
 */
#include "dedup_ext.h"

#include "commands/defrem.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

char *
unique_create(DedupTarget *t, bool *is_constraint)
{
	Oid			nsp = get_rel_namespace(t->relid);
	StringInfoData colnames;
	char	   *name;
	const char *nulls_clause = "";

	/* a name like PostgreSQL's own: table_col1_col2_key */
	initStringInfo(&colnames);
	for (int i = 0; i < t->nkeys; i++)
		appendStringInfo(&colnames, "%s%s", i > 0 ? "_" : "", t->keys[i].name);

	*is_constraint = (t->filter_bare == NULL);
	name = ChooseRelationName(t->relname, colnames.data,
							  *is_constraint ? "key" : "idx", nsp, *is_constraint);
	if (!t->nulls_distinct)
	{
#ifdef DEDUP_HAVE_NULLS_NOT_DISTINCT
		nulls_clause = " NULLS NOT DISTINCT";
#else
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("add_unique with nulls_distinct => false needs PostgreSQL 15 or later")));
#endif
	}

	spi_exec_count(psprintf("CREATE UNIQUE INDEX %s ON %s (%s)%s%s%s",
							quote_identifier(name), t->qualname,
							sql_key_list(t, NULL),
							nulls_clause,
							t->filter_bare ? " WHERE " : "",
							t->filter_bare ? t->filter_bare : ""),
				   SPI_OK_UTILITY);
	if (*is_constraint)
		spi_exec_count(psprintf("ALTER TABLE %s ADD CONSTRAINT %s UNIQUE USING INDEX %s",
								t->qualname, quote_identifier(name), quote_identifier(name)),
					   SPI_OK_UTILITY);
	return quote_qualified_identifier(get_namespace_name(nsp), name);
}
