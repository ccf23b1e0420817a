/*
 * backfill.c
 *		backfill_fk: set a foreign-key column from a natural key.
 *
 * One hash aggregate over the parent's natural key tells, for every key,
 * how many parents have it; one UPDATE ... FROM joins the child with it and
 * links the rows whose key names exactly one parent.  Rows whose key names
 * none (orphans) or several (ambiguous) parents are never guessed: they are
 * reported, and orphans follow on_orphan.  Only rows whose foreign-key column
 * is NULL are touched, so running it again after fixing data links the rest
 * and changes nothing else.
 *
 * With add_constraint, the constraints go on with the weakest locks
 * PostgreSQL allows: FOREIGN KEY ... NOT VALID then VALIDATE, and NOT NULL
 * through a validated CHECK (fk IS NOT NULL), which lets SET NOT NULL skip
 * its scan.  The child is analyzed first: with statistics from before the
 * backfill, VALIDATE may pick a plan that rescans the parent for every row.
 */
#include "dedup_ext.h"

#include "access/relation.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_oper.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(backfill_fk);

typedef enum OnOrphan
{
	ON_ORPHAN_REPORT,
	ON_ORPHAN_DELETE,
	ON_ORPHAN_CREATE_PARENT,
	ON_ORPHAN_ERROR
} OnOrphan;

typedef struct Backfill
{
	DedupTarget *child;			/* child + child_key, as a dedup target */
	Oid			parentid;
	char	   *parent;			/* qualified */
	char	   *fk;				/* fk_column, quoted */
	char	   *fkname;
	AttrNumber	fkatt;
	char	   *pcol;			/* parent_column, quoted */
	char	   *pcolname;
	AttrNumber	pcolatt;
	char	  **pkey;			/* parent_key, quoted */
	char	  **pkeyname;		/* the same, unquoted */
	char	  **eq;				/* child_key[i] = parent_key[i] */
	char	  **pgroup;			/* p.<parent_key[i]> as eq compares it */
	char	  **cgroup;			/* c.<child_key[i]> as eq compares it */
	char	  **stored;			/* cgroup[i] as a created parent stores it, compared as pgroup[i] */
	OnOrphan	on_orphan;
} Backfill;

typedef struct BackfillResult
{
	int64		job_id;
	int64		rows_updated;
	int64		orphan_rows;
	int64		ambiguous_rows;
	int64		parents_created;
	int64		rows_deleted;
	int64		orphans_with_key;	/* orphans a created parent would link */
	char	   *constraint_name;
	bool		constraint_added;
	bool		not_null_added;
	char	   *check_name;		/* the CHECK that stands in for NOT NULL until it is set */
	char	   *deleted_archive;
	char	   *linked_archive;
	char	   *created_archive;
	Oid			filenode;		/* the child's when its linked rows were listed by ctid */
} BackfillResult;

static OnOrphan
parse_on_orphan(const char *s)
{
	if (strcmp(s, "report") == 0)
		return ON_ORPHAN_REPORT;
	if (strcmp(s, "delete") == 0)
		return ON_ORPHAN_DELETE;
	if (strcmp(s, "create_parent") == 0)
		return ON_ORPHAN_CREATE_PARENT;
	if (strcmp(s, "error") == 0)
		return ON_ORPHAN_ERROR;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for argument \"on_orphan\": \"%s\"", s),
			 errhint("Valid values are \"report\", \"delete\", \"create_parent\" and \"error\".")));
	pg_unreachable();
}

/*
 * Key pair i compares child column c.k with parent column p.k by operator
 * op.  The parents are grouped by their key (one parent per key links, more
 * are ambiguous) and missing keys are told apart to create parents; both
 * must count as equal exactly what op finds equal, or a child would be
 * linked to one of two parents op cannot tell apart (char(n) against
 * varchar, float8 against numeric, a nondeterministic collation on one
 * side).  So each side is grouped as op sees it: cast to op's input type,
 * under the collation the comparison uses, by an equality of op's own
 * operator family.
 */
static void
key_pair(Backfill *b, int i, Oid op, Oid childid, AttrNumber catt, Oid parentid, AttrNumber patt)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(op));
	Form_pg_operator form = (Form_pg_operator) GETSTRUCT(tup);
	Oid			types[2] = {form->oprleft, form->oprright};
	Oid			cc,
				pc,
				type;
	int32		typmod;
	Oid			coll = InvalidOid;
	char	   *as[2];

	ReleaseSysCache(tup);
	get_atttypetypmodcoll(childid, catt, &type, &typmod, &cc);
	get_atttypetypmodcoll(parentid, patt, &type, &typmod, &pc);
	for (int side = 0; side < 2; side++)
	{
		Oid			opclass = GetDefaultOpClass(types[side], BTREE_AM_OID);

		if (!OidIsValid(opclass) || !op_in_opfamily(op, get_opclass_family(opclass)))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("child_key column \"%s\" and parent_key column \"%s\" are compared by an operator that cannot group them",
							b->child->keys[i].name, b->pkeyname[i]),
					 errdetail("Operator %s is not in the btree operator family of type %s.",
							   format_operator(op), format_type_be(types[side])),
					 errhint("Give both columns the same type.")));
		as[side] = sql_type(types[side]);
	}
	/* the collation the comparison derives: the columns', or the one not default */
	if (OidIsValid(cc) && OidIsValid(pc) && cc != pc)
	{
		if (cc == DEFAULT_COLLATION_OID)
			coll = pc;
		else if (pc == DEFAULT_COLLATION_OID)
			coll = cc;
		else
			ereport(ERROR,
					(errcode(ERRCODE_COLLATION_MISMATCH),
					 errmsg("child_key column \"%s\" and parent_key column \"%s\" have different collations",
							b->child->keys[i].name, b->pkeyname[i]),
					 errdetail("Collation %s against %s: a comparison of the two has none to use.",
							   generate_collation_name(cc), generate_collation_name(pc))));
	}
	else if (OidIsValid(cc))
		coll = cc;
	b->cgroup[i] = psprintf("CAST(c.%s AS %s)%s%s", b->child->keys[i].quoted, as[0],
							OidIsValid(coll) && type_is_collatable(types[0]) ? " COLLATE " : "",
							OidIsValid(coll) && type_is_collatable(types[0]) ? generate_collation_name(coll) : "");
	b->pgroup[i] = psprintf("CAST(p.%s AS %s)%s%s", b->pkey[i], as[1],
							OidIsValid(coll) && type_is_collatable(types[1]) ? " COLLATE " : "",
							OidIsValid(coll) && type_is_collatable(types[1]) ? generate_collation_name(coll) : "");
	/* type and typmod are the parent column's */
	b->stored[i] = psprintf("CAST(CAST(%s AS %s) AS %s)%s%s", b->cgroup[i],
							format_type_extended(type, typmod,
												 FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY),
							as[1],
							OidIsValid(coll) && type_is_collatable(types[1]) ? " COLLATE " : "",
							OidIsValid(coll) && type_is_collatable(types[1]) ? generate_collation_name(coll) : "");
}

/* the child's key as key_pair groups it: "CAST(c.a AS t), ..." */
static char *
child_key_values(Backfill *b)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < b->child->nkeys; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", b->cgroup[i]);
	return buf.data;
}

static AttrNumber
column_of(Oid relid, const char *name, const char *argname)
{
	AttrNumber	att = get_attnum(relid, name);

	if (att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" named in %s does not exist", name, argname),
				 errdetail("Table %s has no column \"%s\".", get_rel_name(relid), name)));
	return att;
}

static void
require_table(Oid relid, const char *argname)
{
	char		relkind = get_rel_relkind(relid);

	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u given as argument \"%s\" does not exist", relid, argname)));
	if (relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("argument \"%s\" must be a table, but \"%s\" is not a plain table",
						argname, get_rel_name(relid))));
}

/* integer types may reference each other; otherwise the types must match */
static bool
fk_types_compatible(Oid fk, Oid ref)
{
	fk = getBaseType(fk);
	ref = getBaseType(ref);
	if (fk == ref)
		return true;
	return (fk == INT2OID || fk == INT4OID || fk == INT8OID) &&
		(ref == INT2OID || ref == INT4OID || ref == INT8OID);
}

/*
 * fk_column must be free to hold parent_column's values: not a column of
 * the child's primary key (never NULL, so never filled: the archive of the
 * rows linked would have it twice), and not a column of a foreign key that
 * references anything else (filled with p.id, a column that references
 * p(n) would name other parents through it, or fail it).
 */
static void
refuse_fk_column_taken(Backfill *b)
{
	Oid			types[4] = {OIDOID, INT2OID, OIDOID, INT2OID};
	Datum		values[4] = {ObjectIdGetDatum(b->child->relid), Int16GetDatum(b->fkatt),
	ObjectIdGetDatum(b->parentid), Int16GetDatum(b->pcolatt)};

	for (int i = 0; i < b->child->npk; i++)
		if (strcmp(b->child->pk[i].name, b->fkname) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"fk_column\" names column \"%s\" of the primary key of %s",
							b->fkname, b->child->qualname),
					 errdetail("A primary key column is never NULL, and backfill_fk fills only NULL foreign keys.")));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "dedup_ext: SPI_connect failed");
	if (SPI_execute_with_args("SELECT c.conname::pg_catalog.text, c.confrelid::pg_catalog.regclass::pg_catalog.text"
							  " FROM pg_catalog.pg_constraint c"
							  " WHERE c.contype OPERATOR(pg_catalog.=) 'f' AND c.conrelid OPERATOR(pg_catalog.=) $1"
							  " AND $2 OPERATOR(pg_catalog.=) ANY (c.conkey)"
							  " AND NOT (c.confrelid OPERATOR(pg_catalog.=) $3"
							  " AND c.conkey OPERATOR(pg_catalog.=) ARRAY[$2] AND c.confkey OPERATOR(pg_catalog.=) ARRAY[$4])"
							  " ORDER BY 1 LIMIT 1",
							  4, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read foreign keys");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FOREIGN_KEY),
				 errmsg("fk_column \"%s\" of %s is in foreign key %s, which does not reference parent_column \"%s\" of %s",
						b->fkname, b->child->qualname,
						quote_identifier(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
						b->pcolname, b->parent),
				 errdetail("It references %s: values of %s would name other rows through it, or break it.",
						   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), b->pcolname),
				 errhint("Give the referenced column as parent_column, or drop that foreign key first.")));
	SPI_finish();
}

/* The parent's one-column primary key, for parent_column => NULL. */
static char *
parent_pk_column(Oid parentid)
{
	Relation	rel = relation_open(parentid, AccessShareLock);
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	char	   *name = NULL;

	if (OidIsValid(pkoid))
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid));
		Form_pg_index index = (Form_pg_index) GETSTRUCT(tup);

		if (index->indnkeyatts == 1)
			name = get_attname(parentid, index->indkey.values[0], false);
		ReleaseSysCache(tup);
	}
	relation_close(rel, AccessShareLock);
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FOREIGN_KEY),
				 errmsg("parent table %s has no one-column primary key", get_rel_name(parentid)),
				 errhint("Name the referenced column with parent_column.")));
	return name;
}

/* Is column att of the parent the whole key of a unique index a foreign key can reference? */
static bool
referenceable(Oid parentid, AttrNumber att)
{
	Relation	rel = relation_open(parentid, AccessShareLock);
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		found = false;

	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index index = (Form_pg_index) GETSTRUCT(tup);

		found = found || (index->indisunique && index->indimmediate && index->indisvalid &&
						  index->indnkeyatts == 1 && index->indkey.values[0] == att &&
						  heap_attisnull(tup, Anum_pg_index_indpred, NULL) &&
						  heap_attisnull(tup, Anum_pg_index_indexprs, NULL));
		ReleaseSysCache(tup);
	}
	relation_close(rel, AccessShareLock);
	return found;
}

/*
 * What would fail after the work is done, or half-way: refused before it
 * starts, naming the argument.
 */
static void
refuse_what_would_fail(Backfill *b, bool add_constraint)
{
	Oid			childid = b->child->relid;

	if (get_attgenerated(childid, b->fkatt))
		ereport(ERROR,
				(errcode(ERRCODE_GENERATED_ALWAYS),
				 errmsg("fk_column \"%s\" is a generated column", b->fkname),
				 errdetail("Its values are computed; backfill_fk cannot set them.")));
	if (add_constraint && !referenceable(b->parentid, b->pcolatt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FOREIGN_KEY),
				 errmsg("add_constraint needs a unique constraint on parent_column \"%s\" of %s",
						b->pcolname, b->parent),
				 errdetail("A foreign key references a primary key, or columns a plain unique index covers exactly."),
				 errhint("Add one, or use add_constraint => false.")));
	if (add_constraint &&
		pg_class_aclcheck(b->parentid, GetUserId(), ACL_REFERENCES) != ACLCHECK_OK &&
		pg_attribute_aclcheck(b->parentid, b->pcolatt, GetUserId(), ACL_REFERENCES) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", b->parent),
				 errdetail("add_constraint adds a foreign key that references it, which needs the REFERENCES privilege.")));
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT)
	{
		Relation	rel = relation_open(b->parentid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(rel);
		/* a BEFORE INSERT trigger may fill what has no default: left to the INSERT */
		int			natts = rel->trigdesc && rel->trigdesc->trig_insert_before_row ? 0 : desc->natts;

		for (int i = 0; i < natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			bool		filled;

			if (att->attisdropped)
				continue;
			filled = att->atthasdef || att->attidentity || att->attgenerated ||
				get_typdefault(att->atttypid) != NULL;

			for (int k = 0; k < b->child->nkeys && !filled; k++)
				filled = strcmp(NameStr(att->attname), b->pkeyname[k]) == 0;
			/* parent_column too: a created parent without it cannot be linked */
			if ((att->attnotnull || att->attnum == b->pcolatt) && !filled)
				ereport(ERROR,
						(errcode(ERRCODE_NOT_NULL_VIOLATION),
						 errmsg("on_orphan => 'create_parent' cannot create rows of %s: column \"%s\" is %s and has no default",
								b->parent, NameStr(att->attname),
								att->attnum == b->pcolatt ? "parent_column" : "NOT NULL"),
						 errdetail("A created parent gets its key columns from the child; every other column, its default."),
						 errhint("Give the column a default, or use on_orphan => 'report'.")));
		}
		relation_close(rel, AccessShareLock);
	}
}

static char **
text_array(ArrayType *arr, int *n, const char *argname)
{
	Datum	   *elems;
	bool	   *nulls;
	char	  **result;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	result = palloc(sizeof(char *) * (*n + 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"%s\" must not contain NULL", argname)));
		result[i] = TextDatumGetCString(elems[i]);
	}
	return result;
}

/* Validate everything, take the locks; nothing has changed yet. */
static Backfill *
open_backfill(FunctionCallInfo fcinfo)
{
	Backfill   *b = palloc0(sizeof(Backfill));
	Oid			childid = PG_GETARG_OID(0);
	ArrayType  *child_key = PG_GETARG_ARRAYTYPE_P(3);
	char	  **pkeynames;
	int			nparent;
	bool		writes_parent;
	AclResult	acl;
	/* a dry run changes nothing, a background job locks batch by batch */
	bool		weak_locks = PG_GETARG_BOOL(9) || PG_GETARG_BOOL(10);

	b->on_orphan = parse_on_orphan(text_to_cstring(PG_GETARG_TEXT_PP(6)));
	if (!PG_ARGISNULL(11) && PG_GETARG_INT32(11) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"batch_size\" must be greater than zero")));
	require_table(childid, "child");
	b->parentid = PG_GETARG_OID(2);
	require_table(b->parentid, "parent");

	/* the child as a dedup target: owner check, lock, key columns */
	b->child = dedup_target_open_as(childid, child_key, NULL, true, true,
									weak_locks ? AccessShareLock : ShareRowExclusiveLock,
									"child", "child_key");

	acl = pg_class_aclcheck(b->parentid, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(b->parentid)),
				 errdetail("backfill_fk reads the parent given as argument \"parent\".")));
	writes_parent = b->on_orphan == ON_ORPHAN_CREATE_PARENT && !PG_GETARG_BOOL(9);
	/* it changes the parent, as dedup_table changes its table: owners only */
	if (writes_parent && !dedup_rel_ownercheck(b->parentid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s", get_rel_name(b->parentid)),
				 errdetail("on_orphan => 'create_parent' adds rows to the parent, and its rollback removes them; dedup_ext changes a table only for its owner or a member of the owning role.")));
	/* an orphan deleted would take with it the parent some rows' keys name */
	if (b->parentid == childid && b->on_orphan == ON_ORPHAN_DELETE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("on_orphan => 'delete' cannot be used when child and parent are the same table"),
				 errdetail("A row deleted as an orphan may be the parent other rows' keys name; they would become orphans nobody reported."),
				 errhint("Use on_orphan => 'report' and deal with the orphans listed in dedup_orphans.")));
	if (b->parentid != childid)
		LockRelationOid(b->parentid, weak_locks ? AccessShareLock :
						(writes_parent || PG_GETARG_BOOL(7)) ? ShareRowExclusiveLock : AccessShareLock);
	b->parent = quote_qualified_identifier(get_namespace_name(get_rel_namespace(b->parentid)),
										   get_rel_name(b->parentid));

	b->fkname = text_to_cstring(PG_GETARG_TEXT_PP(1));
	b->fkatt = column_of(childid, b->fkname, "fk_column");
	b->fk = pstrdup(quote_identifier(b->fkname));

	pkeynames = PG_ARGISNULL(4) ? NULL : text_array(PG_GETARG_ARRAYTYPE_P(4), &nparent, "parent_key");
	if (pkeynames && nparent != b->child->nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("arguments \"child_key\" and \"parent_key\" must have the same number of columns"),
				 errdetail("child_key has %d, parent_key has %d.", b->child->nkeys, nparent)));
	b->pkey = palloc(sizeof(char *) * b->child->nkeys);
	b->eq = palloc(sizeof(char *) * b->child->nkeys);
	b->pgroup = palloc(sizeof(char *) * b->child->nkeys);
	b->cgroup = palloc(sizeof(char *) * b->child->nkeys);
	b->stored = palloc(sizeof(char *) * b->child->nkeys);
	b->pkeyname = palloc(sizeof(char *) * b->child->nkeys);
	for (int i = 0; i < b->child->nkeys; i++)
	{
		const char *name = pkeynames ? pkeynames[i] : b->child->keys[i].name;
		AttrNumber	att = column_of(b->parentid, name, "parent_key");
		Oid			ptype = get_atttype(b->parentid, att);
		Operator	op = oper(NULL, list_make1(makeString("=")), b->child->keys[i].type, ptype,
							  true, -1);

		if (op == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("child_key column \"%s\" (%s) cannot be compared with parent_key column \"%s\" (%s)",
							b->child->keys[i].name, format_type_be(b->child->keys[i].type),
							name, format_type_be(ptype))));
		b->eq[i] = sql_operator(oprid(op));
		b->pkey[i] = pstrdup(quote_identifier(name));
		b->pkeyname[i] = pstrdup(name);
		key_pair(b, i, oprid(op), childid, get_attnum(childid, b->child->keys[i].name), b->parentid, att);
		ReleaseSysCache(op);
	}

	b->pcolname = PG_ARGISNULL(5) ? parent_pk_column(b->parentid) : text_to_cstring(PG_GETARG_TEXT_PP(5));
	b->pcolatt = column_of(b->parentid, b->pcolname, "parent_column");
	b->pcol = pstrdup(quote_identifier(b->pcolname));
	if (!fk_types_compatible(get_atttype(childid, b->fkatt), get_atttype(b->parentid, b->pcolatt)))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("fk_column \"%s\" has type %s, but parent_column \"%s\" has type %s",
						b->fkname, format_type_be(get_atttype(childid, b->fkatt)),
						b->pcolname, format_type_be(get_atttype(b->parentid, b->pcolatt))),
				 errhint("A foreign-key column needs the type of the column it references.")));
	refuse_fk_column_taken(b);
	refuse_what_would_fail(b, PG_GETARG_BOOL(7));
	return b;
}

/* c.k = m.dedup_k<i> AND ... (or = p.<parent key> with alias p), each side as key_pair casts it */
static char *
key_join(Backfill *b, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < b->child->nkeys; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, " AND ");
		if (strcmp(alias, "m") == 0)
			appendStringInfo(&buf, "%s %s m.dedup_k%d", b->cgroup[i], b->eq[i], i);
		else
			appendStringInfo(&buf, "%s %s %s", b->cgroup[i], b->eq[i], b->pgroup[i]);
	}
	return buf.data;
}

/*
 * One row per natural key of the parent: how many parents, and one of them.
 * A parent whose parent_column is NULL cannot be referenced: it counts
 * twice, so that its key is ambiguous (never linked, never an orphan that
 * on_orphan would delete or create a second parent for).
 */
static char *
parent_keys(Backfill *b)
{
	StringInfoData cols;
	StringInfoData group;

	initStringInfo(&cols);
	initStringInfo(&group);
	for (int i = 0; i < b->child->nkeys; i++)
	{
		appendStringInfo(&cols, "%s AS dedup_k%d, ", b->pgroup[i], i);
		appendStringInfo(&group, "%s%s", i > 0 ? ", " : "", b->pgroup[i]);
	}
	return psprintf("SELECT %s pg_catalog.count(*) OPERATOR(pg_catalog.+)"
					" pg_catalog.count(*) FILTER (WHERE p.%s IS NULL) AS dedup_n,"
					" (pg_catalog.array_agg(p.%s))[1] AS dedup_ref"
					" FROM ONLY %s p GROUP BY %s",
					cols.data, b->pcol, b->pcol, b->parent, group.data);
}

static char *
keys_not_null(Backfill *b)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "true");
	for (int i = 0; i < b->child->nkeys; i++)
		appendStringInfo(&buf, " AND c.%s IS NOT NULL", b->child->keys[i].quoted);
	return buf.data;
}

/* What the backfill would do: linkable, orphan, ambiguous rows, missing keys. */
static void
classify(Backfill *b, BackfillResult *res)
{
	spi_exec_count_no_nestloop(psprintf("SELECT pg_catalog.count(*) FILTER (WHERE m.dedup_n OPERATOR(pg_catalog.=) 1),"
							" pg_catalog.count(*) FILTER (WHERE m.dedup_n IS NULL),"
							" pg_catalog.count(*) FILTER (WHERE m.dedup_n OPERATOR(pg_catalog.>) 1),"
							" pg_catalog.count(DISTINCT ROW(%s)) FILTER (WHERE m.dedup_n IS NULL AND %s),"
							" pg_catalog.count(*) FILTER (WHERE m.dedup_n IS NULL AND %s)"
							" FROM ONLY %s c LEFT JOIN (%s) m ON %s WHERE c.%s IS NULL",
							child_key_values(b), keys_not_null(b), keys_not_null(b),
							b->child->qualname, parent_keys(b), key_join(b, "m"), b->fk),
				   SPI_OK_SELECT);
	res->rows_updated = spi_get_int64(0, 1);
	res->orphan_rows = spi_get_int64(0, 2);
	res->ambiguous_rows = spi_get_int64(0, 3);
	res->parents_created = spi_get_int64(0, 4);
	res->orphans_with_key = spi_get_int64(0, 5);
}

/* which rows report_orphans lists: all the orphan and ambiguous ones */
#define ORPHANS_AND_AMBIGUOUS "(m.dedup_n IS NULL OR m.dedup_n OPERATOR(pg_catalog.>) 1)"

/*
 * List the orphan and ambiguous rows that match which (a condition on the
 * child row c and its parent key m) in dedup_orphans, but for those listed
 * for the job already.  They are collected by the caller into a temporary
 * table first; the extension owner only copies that table, so no user code
 * runs with its rights.
 */
static void
report_orphans(Backfill *b, int64 job_id, const char *which)
{
	char	   *tmp = spi_temp_table_name("orphans");
	char	   *origin = job_origin_sql(job_id);
	char	   *schema = dedup_ext_schema();

	spi_exec_count(psprintf("CREATE TEMP TABLE %s (row_id pg_catalog.jsonb, key_values pg_catalog.jsonb,"
							" reason pg_catalog.text) ON COMMIT DROP", tmp),
				   SPI_OK_UTILITY);
	spi_exec_count_no_nestloop(psprintf("INSERT INTO %s SELECT %s, %s,"
										" CASE WHEN m.dedup_n IS NULL THEN 'orphan' ELSE 'ambiguous' END"
										" FROM ONLY %s c LEFT JOIN (%s) m ON %s"
										" WHERE c.%s IS NULL AND %s",
										tmp, sql_row_id(b->child, "c"), sql_key_json(b->child, "c"),
										b->child->qualname, parent_keys(b), key_join(b, "m"), b->fk, which),
							   SPI_OK_INSERT);
	spi_exec_as_owner(psprintf("INSERT INTO %s.dedup_orphan (job_id, row_id, key_values, reason%s)"
							   " SELECT %lld, t.row_id, t.key_values, t.reason%s%s FROM %s t"
							   " WHERE NOT EXISTS (SELECT FROM %s.dedup_orphan o"
							   " WHERE o.job_id OPERATOR(pg_catalog.=) %lld"
							   " AND o.row_id OPERATOR(pg_catalog.=) t.row_id%s%s)",
							   schema, origin ? ", origin" : "", (long long) job_id,
							   origin ? ", " : "", origin ? origin : "", tmp, schema, (long long) job_id,
							   origin ? " AND o.origin OPERATOR(pg_catalog.=) " : "", origin ? origin : ""),
					  0, NULL, NULL, NULL, SPI_OK_INSERT);
	spi_exec_count(psprintf("DROP TABLE %s", tmp), SPI_OK_UTILITY);
}

static char *
orphan_condition(Backfill *b)
{
	return psprintf("c.%s IS NULL AND NOT EXISTS (SELECT FROM ONLY %s p WHERE %s)",
					b->fk, b->parent, key_join(b, "p"));
}

static void
delete_orphans(Backfill *b, BackfillResult *res)
{
	char	   *del = psprintf("DELETE FROM ONLY %s c WHERE %s RETURNING c.*",
							   b->child->qualname, orphan_condition(b));

	refuse_referenced_rows(b->child->relid, b->child->qualname, "delete orphan",
						   orphan_condition(b), true, true, HINT_KEEP_ORPHANS);
	if (res->deleted_archive)
		res->rows_deleted = spi_exec_count(psprintf("WITH dedup_d AS (%s) INSERT INTO %s"
													" SELECT d.*, %lld, 'delete', NULL, NULL FROM dedup_d d",
													del, res->deleted_archive, (long long) res->job_id),
										   SPI_OK_INSERT);
	else
		res->rows_deleted = spi_exec_count(del, SPI_OK_DELETE_RETURNING);
}

/*
 * A parent created for an orphan holds its key in the parent_key columns,
 * and must then match it: a numeric 1.5 stored in an integer column is 2,
 * a text 'ab ' in a char(4) column 'ab  ', and neither compares equal to
 * the key it was made for (three orphans 1.5, 2 and 2.4 made three parents
 * 2, none linked, and the child keyed 2 ambiguous for good).  Refused, for
 * a dry run too, before anything changes.
 */
static void
refuse_unmatched_parents(Backfill *b)
{
	StringInfoData same;
	MemoryContext oldcxt = CurrentMemoryContext;

	initStringInfo(&same);
	for (int i = 0; i < b->child->nkeys; i++)
		appendStringInfo(&same, "%s%s %s %s", i > 0 ? " AND " : "", b->stored[i], b->eq[i], b->cgroup[i]);
	PG_TRY();
	{
		spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c WHERE %s AND %s AND NOT (%s)",
								b->child->qualname, orphan_condition(b), keys_not_null(b), same.data),
					   SPI_OK_SELECT);
	}
	PG_CATCH();
	{
		/* a key the column refuses outright (1e10 in an integer, a domain's CHECK) */
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION &&
			edata->sqlerrcode != ERRCODE_CHECK_VIOLATION)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("on_orphan => 'create_parent' cannot create parents for the orphan rows of %s",
						b->child->qualname),
				 errdetail("Stored in the parent_key columns of %s, a child_key value fails: %s",
						   b->parent, edata->message),
				 errhint("Give parent_key the type of child_key, or use on_orphan => 'report' and create those parents by hand.")));
	}
	PG_END_TRY();
	if (spi_get_int64(0, 1) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("on_orphan => 'create_parent' cannot create parents for %lld orphan rows of %s",
						(long long) spi_get_int64(0, 1), b->child->qualname),
				 errdetail("Stored in the parent_key columns of %s, their child_key value changes (a numeric 1.5 in an integer column becomes 2, a text in a char(n) column is padded or cut), and the parent made for it would not match it.",
						   b->parent),
				 errhint("Give parent_key the type of child_key, or use on_orphan => 'report' and create those parents by hand.")));
}

/* one parent per distinct missing key, key columns filled, the rest defaults */
static void
create_parents(Backfill *b, BackfillResult *res)
{
	StringInfoData pcols;
	char	   *ins;

	initStringInfo(&pcols);
	for (int i = 0; i < b->child->nkeys; i++)
		appendStringInfo(&pcols, "%s%s", i > 0 ? ", " : "", b->pkey[i]);
	ins = psprintf("INSERT INTO %s AS p (%s) SELECT DISTINCT %s FROM ONLY %s c WHERE %s AND %s"
				   " RETURNING p.*",
				   b->parent, pcols.data, child_key_values(b), b->child->qualname,
				   orphan_condition(b), keys_not_null(b));
	/* a job submitted before the archive kept whole rows has one of keys only */
	if (res->created_archive &&
		get_attnum(dedup_relid_by_name(res->created_archive), "dedup_job_id") == InvalidAttrNumber)
		res->parents_created = spi_exec_count(psprintf("WITH dedup_i AS (%s) INSERT INTO %s"
													   " SELECT i.%s FROM dedup_i i",
													   ins, res->created_archive, b->pcol),
											  SPI_OK_INSERT);
	else if (res->created_archive)
		res->parents_created = spi_exec_count(psprintf("WITH dedup_i AS (%s) INSERT INTO %s"
													   " SELECT i.*, %lld, 'create', NULL, NULL FROM dedup_i i",
													   ins, res->created_archive, (long long) res->job_id),
											  SPI_OK_INSERT);
	else
		res->parents_created = spi_exec_count(ins, SPI_OK_INSERT_RETURNING);
}

/*
 * The one pass that links: a hash join with the parent's unambiguous keys,
 * planned without nested loops (as classify and report_orphans are): the
 * aggregate of the parent's keys is easily estimated at one row (a HAVING,
 * statistics taken while the tables were small), and a nested loop then
 * scanned the child once per parent key (60 s for 300,000 rows; the whole
 * call takes 2.6 s without).  range: NULL for the whole table, or a
 * condition on c (a background batch's blocks).  Returns the rows linked.
 */
static int64
link_rows(Backfill *b, BackfillResult *res, const char *range)
{
	char	   *upd = psprintf("UPDATE ONLY %s c SET %s = m.dedup_ref FROM (%s) m"
							   " WHERE c.%s IS NULL AND %s AND m.dedup_n OPERATOR(pg_catalog.=) 1%s%s",
							   b->child->qualname, b->fk, parent_keys(b), b->fk, key_join(b, "m"),
							   range ? " AND " : "", range ? range : "");
	char	   *ids;
	MemoryContext oldcxt = CurrentMemoryContext;
	int64		linked = 0;
	/* a smallint or integer fk_column, and a parent's value beyond it */
	char	   *hint = psprintf("fk_column %s has type %s and parent_column %s type %s: a value of %s does not fit %s. Give %s the type of %s.",
								b->fk, format_type_be(get_atttype(b->child->relid, b->fkatt)),
								b->pcol, format_type_be(get_atttype(b->parentid, b->pcolatt)),
								b->pcol, b->fk, b->fk, b->pcol);

	if (res->linked_archive)
	{
		ids = sql_pk_list(b->child, "c");
		/* a job submitted by an older version has an archive without it */
		if (get_attnum(dedup_relid_by_name(res->linked_archive), b->fkname) != InvalidAttrNumber)
			ids = psprintf("%s, c.%s", ids, b->fk);
		upd = psprintf("WITH dedup_u AS (%s RETURNING %s) INSERT INTO %s SELECT * FROM dedup_u",
					   upd, ids, res->linked_archive);
	}
	PG_TRY();
	{
		linked = spi_exec_count_no_nestloop(upd, res->linked_archive ? SPI_OK_INSERT : SPI_OK_UPDATE);
	}
	PG_CATCH();
	{
		spi_rethrow_with_hint(oldcxt, ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, 0, hint, true);
	}
	PG_END_TRY();
	return linked;
}

/*
 * The archives a backfill writes to: deleted orphans, created parents (as
 * created: a rollback removes only those unchanged and unreferenced), linked
 * rows (their primary key or ctid, and the value the job gave their foreign
 * key: a rollback sets back to NULL only a row that still has it).
 */
static void
create_archives(Backfill *b, BackfillResult *res)
{
	List	   *ids = NIL;

	if (b->on_orphan == ON_ORPHAN_DELETE)
		res->deleted_archive = archive_create(b->child->relid, res->job_id, NULL, InvalidOid, NIL);
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT)
		res->created_archive = archive_create(b->parentid, res->job_id, "created", GetUserId(), NIL);
	for (int i = 0; i < b->child->npk; i++)
		ids = lappend(ids, b->child->pk[i].name);
	ids = ids ? ids : list_make1("ctid");
	/* a ctid names a row only until the table is rewritten (dedup_rollback checks) */
	if (b->child->npk == 0)
		res->filenode = rel_class(b->child->relid).relfilenode;
	res->linked_archive = archive_create(b->child->relid, res->job_id, "linked", InvalidOid,
										 lappend(ids, b->fkname));
}

bool
column_not_null(Oid relid, AttrNumber att)
{
	HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(att));
	bool		result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for attribute %d of relation %u", att, relid);
	result = ((Form_pg_attribute) GETSTRUCT(tup))->attnotnull;
	ReleaseSysCache(tup);
	return result;
}

/*
 * The constraints go on only if every row's foreign key is set.  Called
 * right after every row was offered its link: a row left NULL is an orphan,
 * an ambiguous row, or one that could be linked but was kept NULL (a BEFORE
 * UPDATE trigger, row-level security).
 */
static void
refuse_nulls_left(Backfill *b)
{
	BackfillResult counts = {0};
	int64		kept;

	/* most often none: then no join with the parent's keys is needed */
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c WHERE c.%s IS NULL",
							b->child->qualname, b->fk), SPI_OK_SELECT);
	if (spi_get_int64(0, 1) == 0)
		return;
	classify(b, &counts);
	kept = counts.rows_updated;
	if (counts.orphan_rows + counts.ambiguous_rows + kept > 0)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("cannot add the constraints: %lld rows of %s still have %s NULL",
						(long long) (counts.orphan_rows + counts.ambiguous_rows + kept), b->child->qualname, b->fk),
				 kept > 0 ?
				 errdetail("%lld rows match no parent (orphans), %lld match more than one (ambiguous; never guessed), and %lld match one but were not linked (a BEFORE UPDATE trigger or row-level security kept them NULL).",
						   (long long) counts.orphan_rows, (long long) counts.ambiguous_rows, (long long) kept) :
				 errdetail("%lld rows match no parent (orphans) and %lld match more than one (ambiguous); ambiguous rows are never guessed.",
						   (long long) counts.orphan_rows, (long long) counts.ambiguous_rows),
				 errhint("Run backfill_fk without add_constraint to link what can be linked and list the rest in dedup_orphans; fix them, then run it again with add_constraint => true.")));
}

/*
 * FOREIGN KEY NOT VALID + VALIDATE, then NOT NULL through a validated CHECK,
 * one stage at a time: a background job commits after each, so the short
 * strong locks (ADD ... NOT VALID, SET NOT NULL) are never held while a
 * VALIDATE scans.  Returns the next stage, or -1 when all is done.  Every
 * row with the foreign key NULL was just offered its link.
 */
static int
constraint_stage(Backfill *b, BackfillResult *res, int stage)
{
	Oid			nsp = get_rel_namespace(b->child->relid);

	switch (stage)
	{
		case 0:
			refuse_nulls_left(b);
			spi_exec_count(psprintf("ANALYZE %s", b->child->qualname), SPI_OK_UTILITY);
			own_constraints_immediate(b->child->relid);
			/* orphans deleted queued the checks of keys that reference the child */
			references_immediate(b->child->relid);

			/* a re-run finds the foreign key of an earlier run and keeps it */
			spi_exec_count(psprintf("SELECT c.conname::pg_catalog.text FROM pg_catalog.pg_constraint c"
									" WHERE c.contype OPERATOR(pg_catalog.=) 'f'"
									" AND c.conrelid OPERATOR(pg_catalog.=) %u AND c.confrelid OPERATOR(pg_catalog.=) %u"
									" AND c.conkey OPERATOR(pg_catalog.=) '{%d}' AND c.confkey OPERATOR(pg_catalog.=) '{%d}'"
									" ORDER BY 1 LIMIT 1",
									b->child->relid, b->parentid, b->fkatt, b->pcolatt), SPI_OK_SELECT);
			if (SPI_processed > 0)
				res->constraint_name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			else
			{
				res->constraint_name = ChooseConstraintName(b->child->relname, b->fkname, "fkey", nsp, NIL);
				res->constraint_added = true;
				spi_exec_count(psprintf("ALTER TABLE %s ADD CONSTRAINT %s FOREIGN KEY (%s) REFERENCES %s (%s) NOT VALID",
										b->child->qualname, quote_identifier(res->constraint_name), b->fk,
										b->parent, b->pcol), SPI_OK_UTILITY);
			}
			return 1;
		case 1:
			spi_exec_count(psprintf("ALTER TABLE %s VALIDATE CONSTRAINT %s",
									b->child->qualname, quote_identifier(res->constraint_name)), SPI_OK_UTILITY);
			return column_not_null(b->child->relid, b->fkatt) ? -1 : 2;
		case 2:
			res->check_name = ChooseConstraintName(b->child->relname, b->fkname, "not_null", nsp, NIL);
			spi_exec_count(psprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s IS NOT NULL) NOT VALID",
									b->child->qualname, quote_identifier(res->check_name), b->fk),
						   SPI_OK_UTILITY);
			return 3;
		case 3:
			spi_exec_count(psprintf("ALTER TABLE %s VALIDATE CONSTRAINT %s", b->child->qualname,
									quote_identifier(res->check_name)), SPI_OK_UTILITY);
			return 4;
		default:
			spi_exec_count(psprintf("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL", b->child->qualname, b->fk),
						   SPI_OK_UTILITY);
			spi_exec_count(psprintf("ALTER TABLE %s DROP CONSTRAINT %s", b->child->qualname,
									quote_identifier(res->check_name)), SPI_OK_UTILITY);
			res->not_null_added = true;
			return -1;
	}
}

static void
add_constraints(Backfill *b, BackfillResult *res)
{
	for (int stage = 0; stage >= 0;)
		stage = constraint_stage(b, res, stage);
}

/* what dedup_rollback needs to undo the job */
static char *
undo_json(Backfill *b, BackfillResult *res)
{
	StringInfoData buf;
	const char *names[] = {"deleted", "linked", "created", "constraint", "fk_column", "parent_column",
	"check", "fk_name"};
	const char *values[] = {res->deleted_archive, res->linked_archive, res->created_archive,
		res->constraint_added ? res->constraint_name : NULL, b->fkname, b->pcolname, res->check_name,
	res->constraint_name};

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"parent_oid\": %u, \"not_null\": %s", b->parentid,
					 res->not_null_added ? "true" : "false");
	for (int i = 0; i < lengthof(names); i++)
	{
		appendStringInfo(&buf, ", \"%s\": ", names[i]);
		if (values[i])
			escape_json(&buf, values[i]);
		else
			appendStringInfoString(&buf, "null");
	}
	appendStringInfo(&buf, ", \"orphan_rows\": %lld, \"ambiguous_rows\": %lld, \"parents_created\": %lld",
					 (long long) res->orphan_rows, (long long) res->ambiguous_rows,
					 (long long) res->parents_created);
	if (OidIsValid(res->filenode))
		appendStringInfo(&buf, ", \"filenode\": %u", res->filenode);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static char *
params_json(FunctionCallInfo fcinfo, Backfill *b)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"fk_column\": ");
	escape_json(&buf, b->fkname);
	appendStringInfoString(&buf, ", \"parent\": ");
	escape_json(&buf, b->parent);
	appendStringInfoString(&buf, ", \"key\": [");
	for (int i = 0; i < b->child->nkeys; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, b->child->keys[i].name);
	}
	appendStringInfoString(&buf, "], \"parent_column\": ");
	escape_json(&buf, b->pcolname);
	appendStringInfoString(&buf, ", \"on_orphan\": ");
	escape_json(&buf, text_to_cstring(PG_GETARG_TEXT_PP(6)));
	appendStringInfo(&buf, ", \"add_constraint\": %s, \"archive\": %s, \"background\": %s",
					 PG_GETARG_BOOL(7) ? "true" : "false", PG_GETARG_BOOL(8) ? "true" : "false",
					 PG_GETARG_BOOL(10) ? "true" : "false");
	/* what a background worker needs to open the same backfill again */
	appendStringInfo(&buf, ", \"parent_oid\": %u, \"parent_key\": [", b->parentid);
	for (int i = 0; i < b->child->nkeys; i++)
	{
		appendStringInfoString(&buf, i > 0 ? ", " : "");
		escape_json(&buf, b->pkeyname[i]);
	}
	appendStringInfo(&buf, "], \"batch_rows\": %d, \"batch_delay\": %d, \"lock_timeout\": %d",
					 PG_ARGISNULL(11) ? dedup_batch_size : PG_GETARG_INT32(11),
					 dedup_batch_delay, dedup_lock_timeout);
	if (PG_GETARG_BOOL(10))
		job_settings_json(&buf);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static void
return_result(FunctionCallInfo fcinfo, BackfillResult *res, const char *state)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[8];
	bool		nulls[8] = {0};

	InitMaterializedSRF(fcinfo, 0);
	values[0] = Int64GetDatum(res->job_id);
	nulls[0] = (res->job_id == 0);
	values[1] = CStringGetTextDatum(state);
	values[2] = Int64GetDatum(res->rows_updated);
	values[3] = Int64GetDatum(res->orphan_rows);
	values[4] = Int64GetDatum(res->ambiguous_rows);
	values[5] = Int64GetDatum(res->parents_created);
	values[6] = Int64GetDatum(res->rows_deleted);
	/* a queued job has not counted anything yet */
	for (int i = 2; i <= 6; i++)
		nulls[i] = (strcmp(state, "queued") == 0);
	nulls[7] = (res->constraint_name == NULL);
	values[7] = nulls[7] ? (Datum) 0 : CStringGetTextDatum(res->constraint_name);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * background => true: validated like a foreground call, queued, archives
 * created (they commit with the submission, and the undo record names them,
 * so even a cancelled job rolls back); a worker does the rest.
 */
static void
submit_background(FunctionCallInfo fcinfo, Backfill *b, bool archive)
{
	BackfillResult res = {0};

	job_refuse_temp(b->parentid);
	res.job_id = job_submit("backfill", b->child->relid, b->child->relname, params_json(fcinfo, b), false,
						   b->parentid);
	if (archive)
		create_archives(b, &res);
	job_set_undo(res.job_id, undo_json(b, &res));
	return_result(fcinfo, &res, "queued");
}

Datum
backfill_fk(PG_FUNCTION_ARGS)
{
	static const char *const argnames[] = {
		"child", "fk_column", "parent", "child_key", NULL, NULL, "on_orphan",
		"add_constraint", "archive", "dry_run", "background"
	};
	Backfill   *b;
	BackfillResult res = {0};
	bool		archive;

	for (int i = 0; i < lengthof(argnames); i++)
		if (argnames[i])
			dedup_require_arg(fcinfo, i, argnames[i]);
	/* a dry run changes nothing, and may run in a read-only transaction */
	if (!PG_GETARG_BOOL(9))
		PreventCommandIfReadOnly("backfill_fk()");
	b = open_backfill(fcinfo);
	archive = PG_GETARG_BOOL(8);

	SPI_connect();
	/* what a delete would cascade to no archive keeps: refused, a dry run's too */
	if (b->on_orphan == ON_ORPHAN_DELETE)
		refuse_cascading_references(b->child->relid, b->child->qualname, "delete orphan", true, 0,
									HINT_KEEP_ORPHANS);
	if (PG_GETARG_BOOL(10) && !PG_GETARG_BOOL(9))
	{
		submit_background(fcinfo, b, archive);
		SPI_finish();
		return (Datum) 0;
	}
	classify(b, &res);
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT && res.orphans_with_key > 0)
		refuse_unmatched_parents(b);
	if (PG_GETARG_BOOL(9))
	{
		if (b->on_orphan == ON_ORPHAN_CREATE_PARENT)
			res.rows_updated += res.orphans_with_key;
		else
			res.parents_created = 0;
		if (b->on_orphan == ON_ORPHAN_DELETE)
			res.rows_deleted = res.orphan_rows;
		return_result(fcinfo, &res, "dry_run");
		SPI_finish();
		return (Datum) 0;
	}
	if (b->on_orphan == ON_ORPHAN_ERROR && res.orphan_rows > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("%lld rows of %s match no row of %s", (long long) res.orphan_rows,
						b->child->qualname, b->parent),
				 errdetail("on_orphan => 'error' was given; nothing was changed."),
				 errhint("Run it with on_orphan => 'report' (or dry_run => true) to list them.")));

	res.job_id = job_create("backfill", "preparing", b->child->relid, b->child->relname, params_json(fcinfo, b), 0);
	progress_counts(res.rows_updated, -1, -1, -1);
	if (res.orphan_rows + res.ambiguous_rows > 0)
		report_orphans(b, res.job_id, ORPHANS_AND_AMBIGUOUS);

	if (archive)
		create_archives(b, &res);
	if (b->on_orphan == ON_ORPHAN_DELETE)
		delete_orphans(b, &res);
	res.parents_created = 0;
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT)
		create_parents(b, &res);
	progress_phase("linking");
	res.rows_updated = link_rows(b, &res, NULL);
	progress_counts(-1, res.rows_updated, res.rows_updated, -1);
	if (PG_GETARG_BOOL(7))
	{
		progress_phase("constraints");
		add_constraints(b, &res);
	}

	job_finish(res.job_id, NULL, 0, res.rows_deleted, 0,
			   res.rows_updated + res.rows_deleted + res.parents_created, NULL, NULL, false);
	job_set_undo(res.job_id, undo_json(b, &res));
	archive_close(res.job_id);
	return_result(fcinfo, &res, "done");
	SPI_finish();
	return (Datum) 0;
}

/*
 * Background backfill.  Phases, each change committed with its work:
 *   preparing    orphans: 'error' fails here, before any change; 'delete' and
 *                'create_parent' act on the orphans (row locks only);
 *   linking      batches of heap blocks (about batch_size rows each), each
 *                one transaction that links its rows and records the next
 *                block as checkpoint;
 *   sweeping     one more UPDATE over the rows still NULL, for rows written
 *                behind the batches;
 *   reporting    orphans and ambiguous rows into dedup_orphans;
 *   constraints  (add_constraint) one stage per transaction;
 *   finishing.
 */
typedef struct BgBackfill
{
	Backfill   *b;
	BackfillResult res;
	bool		add_constraint;
	BlockNumber blocks_per_batch;
} BgBackfill;

static char *
undo_text(DedupJob *row, const char *name)
{
	return row->undo ? json_field_text(row->undo, name) : NULL;
}

/* Open the backfill again from the job's parameters, exactly as submitted. */
void
bg_backfill_load(BgJob *job, DedupJob *row)
{
	LOCAL_FCINFO(args, 12);
	BgBackfill *bb;
	char	   *fk = job_param(row, "fk_column");
	char	   *pcol = job_param(row, "parent_column");
	char	   *on_orphan = job_param(row, "on_orphan");
	Oid			parentid = (Oid) strtoul(job_param(row, "parent_oid"), NULL, 10);
	ArrayType  *key = job_param_array(row, "key");
	ArrayType  *pkey = job_param_array(row, "parent_key");
	bool		add_constraint = strcmp(job_param(row, "add_constraint"), "true") == 0;
	bool		archive = strcmp(job_param(row, "archive"), "true") == 0;
	char	   *deleted = undo_text(row, "deleted");
	char	   *linked = undo_text(row, "linked");
	char	   *created = undo_text(row, "created");
	char	   *added = undo_text(row, "constraint");
	char	   *fkname = undo_text(row, "fk_name");
	char	   *check = undo_text(row, "check");
	char	   *not_null = undo_text(row, "not_null");
	char	   *orphans = undo_text(row, "orphan_rows");
	char	   *ambiguous = undo_text(row, "ambiguous_rows");
	char	   *parents = undo_text(row, "parents_created");
	char	   *filenode = undo_text(row, "filenode");
	double		tuples_per_page;
	Relation	rel;
	MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);

	InitFunctionCallInfoData(*args, NULL, 12, InvalidOid, NULL, NULL);
	/* LOCAL_FCINFO leaves them unset: a parent_key read as NULL became child_key */
	for (int i = 0; i < 11; i++)
		args->args[i].isnull = false;
	args->args[0].value = ObjectIdGetDatum(job->relid);
	args->args[1].value = CStringGetTextDatum(fk);
	args->args[2].value = ObjectIdGetDatum(parentid);
	args->args[3].value = PointerGetDatum(key);
	args->args[4].value = PointerGetDatum(pkey);
	args->args[5].value = CStringGetTextDatum(pcol);
	args->args[6].value = CStringGetTextDatum(on_orphan);
	args->args[7].value = BoolGetDatum(add_constraint);
	args->args[8].value = BoolGetDatum(archive);
	args->args[9].value = BoolGetDatum(false);
	args->args[10].value = BoolGetDatum(true);
	args->args[11].isnull = true;

	bb = palloc0(sizeof(BgBackfill));
	bb->b = open_backfill(args);
	bb->add_constraint = add_constraint;
	bb->res.job_id = job->job_id;
	bb->res.deleted_archive = deleted ? pstrdup(deleted) : NULL;
	bb->res.linked_archive = linked ? pstrdup(linked) : NULL;
	bb->res.created_archive = created ? pstrdup(created) : NULL;
	bb->res.constraint_added = added != NULL;
	bb->res.constraint_name = fkname ? pstrdup(fkname) : NULL;
	bb->res.check_name = check ? pstrdup(check) : NULL;
	bb->res.not_null_added = not_null && strcmp(not_null, "true") == 0;
	bb->res.orphan_rows = orphans ? strtoll(orphans, NULL, 10) : 0;
	bb->res.ambiguous_rows = ambiguous ? strtoll(ambiguous, NULL, 10) : 0;
	bb->res.parents_created = parents ? strtoll(parents, NULL, 10) : 0;
	bb->res.filenode = filenode ? (Oid) strtoul(filenode, NULL, 10) : InvalidOid;
	bb->res.rows_deleted = row->rows_deleted;
	/* a batch is a range of blocks holding about batch_size rows */
	rel = relation_open(job->relid, AccessShareLock);
	tuples_per_page = rel->rd_rel->relpages > 0 && rel->rd_rel->reltuples > 0 ?
		rel->rd_rel->reltuples / rel->rd_rel->relpages : 100;
	relation_close(rel, AccessShareLock);
	bb->blocks_per_batch = (BlockNumber) Max(1, job->batch_size / Max(tuples_per_page, 1));
	job->backfill = bb;
	MemoryContextSwitchTo(oldcxt);
}

static void
save_undo(BgJob *job, BgBackfill *bb)
{
	job_set_undo(job->job_id, undo_json(bb->b, &bb->res));
}

static void
prepare_backfill(BgJob *job, void *arg)
{
	BgBackfill *bb = job->backfill;
	Backfill   *b = bb->b;
	BackfillResult *res = &bb->res;

	dedup_check_owner(b->child->relid);
	classify(b, res);
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT && res->orphans_with_key > 0)
		refuse_unmatched_parents(b);
	if (b->on_orphan == ON_ORPHAN_ERROR && res->orphan_rows > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("%lld rows of %s match no row of %s", (long long) res->orphan_rows,
						b->child->qualname, b->parent),
				 errdetail("on_orphan => 'error' was given; nothing was changed."),
				 errhint("Run it with on_orphan => 'report' (or dry_run => true) to list them.")));
	/*
	 * The constraints would fail after every batch had committed its links:
	 * fail now, before any change, when rows would stay NULL (a foreground
	 * call finds it at the end and takes everything back with it).
	 */
	if (bb->add_constraint)
	{
		int64		orphans_left = b->on_orphan == ON_ORPHAN_DELETE ? 0 :
			b->on_orphan == ON_ORPHAN_CREATE_PARENT ? res->orphan_rows - res->orphans_with_key :
			res->orphan_rows;

		if (orphans_left + res->ambiguous_rows > 0)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("cannot add the constraints: %lld rows of %s would still have %s NULL",
							(long long) (orphans_left + res->ambiguous_rows), b->child->qualname, b->fk),
					 errdetail("%lld rows match no parent (orphans) and %lld match more than one (ambiguous); ambiguous rows are never guessed. Nothing was changed.",
							   (long long) orphans_left, (long long) res->ambiguous_rows),
					 errhint("Run backfill_fk without add_constraint to link what can be linked and list the rest in dedup_orphans; fix them, then run it again with add_constraint => true.")));
	}
	bg_record(job, psprintf("rows_total = %lld", (long long) res->rows_updated));
	/* listed as the foreground lists them: before they are gone, or linked */
	if (b->on_orphan == ON_ORPHAN_DELETE && res->orphan_rows > 0)
		report_orphans(b, job->job_id, "m.dedup_n IS NULL");
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT && res->orphans_with_key > 0)
		report_orphans(b, job->job_id, psprintf("m.dedup_n IS NULL AND %s", keys_not_null(b)));
	res->parents_created = 0;
	if (b->on_orphan == ON_ORPHAN_DELETE)
		delete_orphans(b, res);
	if (b->on_orphan == ON_ORPHAN_CREATE_PARENT)
		create_parents(b, res);
	save_undo(job, bb);
	bg_record(job, psprintf("phase = 'linking', checkpoint = 0,"
							" rows_deleted = %lld, rows_changed = %lld",
							(long long) res->rows_deleted,
							(long long) (res->rows_deleted + res->parents_created)));
}

static void
link_batch(BgJob *job, void *arg)
{
	BgBackfill *bb = job->backfill;
	Backfill   *b = bb->b;
	int64		from = job->checkpoint;
	int64		to = from + bb->blocks_per_batch;
	Relation	rel;
	BlockNumber nblocks;
	int64		linked;

	dedup_check_owner(b->child->relid);
	rel = relation_open(b->child->relid, AccessShareLock);
	nblocks = RelationGetNumberOfBlocks(rel);
	relation_close(rel, AccessShareLock);
	bg_compress_wal(true);
	/* run_step disarms it */
	cpu_yield_arm(true);
	linked = link_rows(b, &bb->res,
					   psprintf("c.ctid OPERATOR(pg_catalog.>=) '(%lld,0)'::pg_catalog.tid"
								" AND c.ctid OPERATOR(pg_catalog.<) '(%lld,0)'::pg_catalog.tid",
								(long long) from, (long long) to));
	bg_record(job, psprintf("checkpoint = %lld, rows_done = rows_done OPERATOR(pg_catalog.+) %lld,"
							" rows_changed = rows_changed OPERATOR(pg_catalog.+) %lld,"
							" batches_done = batches_done OPERATOR(pg_catalog.+) 1%s",
							(long long) to, (long long) linked, (long long) linked,
							to >= nblocks ? ", phase = 'sweeping'" : ""));
}

static void
sweep_backfill(BgJob *job, void *arg)
{
	BgBackfill *bb = job->backfill;
	int64		linked;

	dedup_check_owner(bb->b->child->relid);
	linked = link_rows(bb->b, &bb->res, NULL);
	bg_record(job, psprintf("phase = 'reporting', rows_done = rows_done OPERATOR(pg_catalog.+) %lld,"
							" rows_changed = rows_changed OPERATOR(pg_catalog.+) %lld",
							(long long) linked, (long long) linked));
}

static void
report_backfill(BgJob *job, void *arg)
{
	BgBackfill *bb = job->backfill;
	BackfillResult counts = {0};
	char	   *origin = job_origin_sql(job->job_id);
	char	   *mine = origin ? psprintf(" AND o.origin OPERATOR(pg_catalog.=) %s", origin) : "";

	classify(bb->b, &counts);
	/* rows a data-only restore filed under this job id are another database's */
	if (origin)
		spi_exec_as_owner(psprintf("DELETE FROM %s.dedup_orphan o WHERE o.job_id OPERATOR(pg_catalog.=) %lld"
								   " AND o.origin IS DISTINCT FROM %s",
								   dedup_ext_schema(), (long long) job->job_id, origin),
						  0, NULL, NULL, NULL, SPI_OK_DELETE);
	if (counts.orphan_rows + counts.ambiguous_rows > 0)
		report_orphans(bb->b, job->job_id, ORPHANS_AND_AMBIGUOUS);
	/* listed: the orphans prepare_backfill deleted or made parents for, and those left */
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FILTER (WHERE o.reason OPERATOR(pg_catalog.=) 'orphan'),"
							   " pg_catalog.count(*) FILTER (WHERE o.reason OPERATOR(pg_catalog.=) 'ambiguous')"
							   " FROM %s.dedup_orphan o WHERE o.job_id OPERATOR(pg_catalog.=) %lld%s",
							   dedup_ext_schema(), (long long) job->job_id, mine),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	bb->res.orphan_rows = spi_get_int64(0, 1);
	bb->res.ambiguous_rows = spi_get_int64(0, 2);
	save_undo(job, bb);
	bg_record(job, psprintf("phase = '%s', checkpoint = 0",
							bb->add_constraint ? "constraints" : "finishing"));
}

static void
constraint_step(BgJob *job, void *arg)
{
	BgBackfill *bb = job->backfill;
	int64		linked = 0;
	int			next;

	/*
	 * Writers may add rows with the foreign key NULL until the NOT VALID
	 * CHECK of stage 2 stops them.  Those written since the sweep are linked
	 * before the foreign key goes on (stage 0), again before the CHECK does
	 * (2), and those written while stage 2 waited for its lock before the
	 * CHECK is validated (3); a refusal names the rows left (orphans,
	 * ambiguous, kept NULL by a trigger), at stage 0 before any change.
	 */
	if (job->checkpoint != 1 && job->checkpoint != 4)
		linked = link_rows(bb->b, &bb->res, NULL);
	/* stage 0 refuses them itself */
	if (job->checkpoint == 2 || job->checkpoint == 3)
		refuse_nulls_left(bb->b);
	next = constraint_stage(bb->b, &bb->res, (int) job->checkpoint);

	/* the names chosen now are needed by later stages, in later transactions */
	if (bb->res.constraint_name)
		bb->res.constraint_name = MemoryContextStrdup(job->cxt, bb->res.constraint_name);
	if (bb->res.check_name)
		bb->res.check_name = MemoryContextStrdup(job->cxt, bb->res.check_name);
	save_undo(job, bb);
	bg_record(job, psprintf("%s, rows_done = rows_done OPERATOR(pg_catalog.+) %lld,"
							" rows_changed = rows_changed OPERATOR(pg_catalog.+) %lld",
							next < 0 ? "phase = 'finishing'" : psprintf("checkpoint = %d", next),
							(long long) linked, (long long) linked));
}

/*
 * A backfill that ends short of done (failed, cancelled) drops the foreign
 * key and the CHECK its constraint stages committed, named in its undo
 * (written with each stage), so that the child keeps the constraints it
 * had: a NOT VALID CHECK left behind would go on refusing the application's
 * rows with fk_column NULL, for a job that ended.  Its links stay, as every
 * stopped job's committed batches do, for dedup_rollback.  Only as the
 * child's owner (the worker acts as the submitter, dedup_cancel as its
 * caller): otherwise the constraints stay for dedup_rollback too.
 */
void
backfill_drop_constraints(DedupJob *job)
{
	const char *keys[] = {"check", "constraint"};
	char	   *relname = get_rel_name(job->relid);
	bool		dropped = false;

	if (strcmp(job->kind, "backfill") != 0 || job->undo == NULL || relname == NULL ||
		!dedup_rel_ownercheck(job->relid, GetUserId()))
		return;
	for (int i = 0; i < lengthof(keys); i++)
	{
		char	   *name = json_field_text(job->undo, keys[i]);

		if (name == NULL)
			continue;
		spi_exec_count(psprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s",
								quote_qualified_identifier(get_namespace_name(get_rel_namespace(job->relid)),
														   relname),
								quote_identifier(name)),
					   SPI_OK_UTILITY);
		dropped = true;
	}
	if (dropped)
		spi_exec_as_owner(psprintf("UPDATE %s.dedup_job SET undo = undo OPERATOR(pg_catalog.-) 'check'"
								   " OPERATOR(pg_catalog.-) 'constraint' WHERE job_id OPERATOR(pg_catalog.=) %lld",
								   dedup_ext_schema(), (long long) job->job_id),
						  0, NULL, NULL, NULL, SPI_OK_UPDATE);
}

static void
drop_constraints_step(BgJob *job, void *arg)
{
	backfill_drop_constraints(job_fetch(job->job_id, false, false));
}

/* a constraint stage; one that fails after an earlier stage committed undoes those */
static void
constraints_or_none(BgJob *job)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		bg_xact(job, constraint_step, NULL);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (job->checkpoint == 0)
			PG_RE_THROW();		/* nothing committed yet */
		MemoryContextSwitchTo(job->cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(job->cxt);
		PG_TRY();
		{
			(void) bg_xact(job, drop_constraints_step, NULL);
		}
		PG_CATCH();
		{
			/* the job fails with its own error; its constraints stay for dedup_rollback */
			MemoryContextSwitchTo(job->cxt);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
		}
		PG_END_TRY();
		ReThrowError(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

void
bg_backfill(BgJob *job)
{
	for (;;)
	{
		const char *phase = job->phase ? job->phase : "preparing";

		bg_publish(job);
		if (bg_obeyed(job))
			return;
		if (strcmp(phase, "preparing") == 0)
			bg_xact(job, prepare_backfill, NULL);
		else if (strcmp(phase, "linking") == 0)
		{
			/* before a batch takes its row locks (at most 1 ms) */
			cpu_yield_now();
			if (bg_xact(job, link_batch, NULL))
				bg_delay(job);
		}
		else if (strcmp(phase, "sweeping") == 0)
			bg_xact(job, sweep_backfill, NULL);
		else if (strcmp(phase, "reporting") == 0)
			bg_xact(job, report_backfill, NULL);
		else if (strcmp(phase, "constraints") == 0)
			constraints_or_none(job);
		else if (strcmp(phase, "finishing") == 0)
		{
			bg_finish(job);
			return;
		}
		else
			elog(ERROR, "dedup_ext: job %lld is in unknown phase \"%s\"",
				 (long long) job->job_id, phase);
	}
}
