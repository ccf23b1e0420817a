/*
 * compat.h
 *		The only place where dedup_ext looks at PG_VERSION_NUM.
 *
 * dedup_ext targets PostgreSQL 15; these macros keep 14-17 within reach by
 * hiding the few server APIs that were renamed in that range.
 */
#ifndef DEDUP_COMPAT_H
#define DEDUP_COMPAT_H

#include "postgres.h"

#if PG_VERSION_NUM < 140000
#error "dedup_ext requires PostgreSQL 14 or later"
#endif

/* Ownership checks became object_ownercheck() in 16. */
#if PG_VERSION_NUM >= 160000
#include "catalog/pg_class.h"
#include "utils/acl.h"
#define dedup_rel_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#else
#include "utils/acl.h"
#define dedup_rel_ownercheck(relid, roleid) pg_class_ownercheck((relid), (roleid))
#endif

/* MarkGUCPrefixReserved() appeared in 15; 14 spells it the old way. */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/* UNIQUE NULLS NOT DISTINCT exists from 15 on. */
#if PG_VERSION_NUM >= 150000
#define DEDUP_HAVE_NULLS_NOT_DISTINCT 1
#endif

/* InitMaterializedSRF() was SetSingleFuncCall() before 15.2 and absent in 14. */
#if PG_VERSION_NUM < 150002
#define InitMaterializedSRF(fcinfo, flags) SetSingleFuncCall((fcinfo), (flags))
#endif

/*
 * Shared memory is requested from shmem_request_hook from 15 on; 14 takes
 * the request in _PG_init itself.
 */
#if PG_VERSION_NUM >= 150000
#define DEDUP_HAVE_SHMEM_REQUEST_HOOK 1
#endif

/*
 * wal_compression names a method from 15 on; before, it was a boolean for
 * pglz, whose CPU cost a background job does not take on by itself.
 */
#if PG_VERSION_NUM >= 150000 && defined(USE_LZ4)
#define DEDUP_WAL_COMPRESSION "lz4"
#elif PG_VERSION_NUM >= 150000 && defined(USE_ZSTD)
#define DEDUP_WAL_COMPRESSION "zstd"
#endif

/* parse_analyze() was split by parameter style in 15. */
#if PG_VERSION_NUM < 150000
#define parse_analyze_fixedparams(raw, sql, types, n, env) parse_analyze((raw), (sql), (types), (n), (env))
#endif

/* reindex_relation() takes the REINDEX statement first from 17 on. */
#if PG_VERSION_NUM >= 170000
#define dedup_reindex_relation(relid, flags, params) reindex_relation(NULL, (relid), (flags), (params))
#else
#define dedup_reindex_relation(relid, flags, params) reindex_relation((relid), (flags), (params))
#endif

/*
 * tuplesort_begin_datum() took randomAccess instead of sortopt before 15;
 * tuplesort_getdatum() gained a copy flag in 16.
 */
#include "utils/tuplesort.h"
#if PG_VERSION_NUM >= 150000
#define dedup_tuplesort_begin_datum(type, op, mem) \
	tuplesort_begin_datum((type), (op), InvalidOid, false, (mem), NULL, TUPLESORT_NONE)
#else
#define dedup_tuplesort_begin_datum(type, op, mem) \
	tuplesort_begin_datum((type), (op), InvalidOid, false, (mem), NULL, false)
#endif
#if PG_VERSION_NUM >= 160000
#define dedup_tuplesort_getdatum(state, val, isnull) \
	tuplesort_getdatum((state), true, true, (val), (isnull), NULL)
#else
#define dedup_tuplesort_getdatum(state, val, isnull) \
	tuplesort_getdatum((state), true, (val), (isnull), NULL)
#endif

/* old_snapshot_threshold, and the page check that goes with it, went in 17 */
#if PG_VERSION_NUM < 170000
#define dedup_test_for_old_snapshot(snapshot, rel, page) TestForOldSnapshot((snapshot), (rel), (page))
#else
#define dedup_test_for_old_snapshot(snapshot, rel, page) ((void) 0)
#endif

/* LockHeldByMe() can also look for a stronger mode from 17 on */
#include "storage/lock.h"
#if PG_VERSION_NUM >= 170000
#define dedup_lock_held_by_me(tag, mode) LockHeldByMe((tag), (mode), false)
#else
#define dedup_lock_held_by_me(tag, mode) LockHeldByMe((tag), (mode))
#endif

#endif							/* DEDUP_COMPAT_H */
