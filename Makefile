# dedup_ext: PGXS build
MODULE_big = dedup_ext
OBJS = \
	dedup_ext.o \
	src/args.o \
	src/sqlgen.o \
	src/audit.o \
	src/backfill.o \
	src/batch.o \
	src/candidates.o \
	src/control.o \
	src/cpu_yield.o \
	src/dedup.o \
	src/guard.o \
	src/archive.o \
	src/jobs.o \
	src/launcher.o \
	src/merge.o \
	src/progress.o \
	src/rewrite.o \
	src/rollback.o \
	src/spi.o \
	src/undo_chain.o \
	src/unique.o \
	src/verify.o \
	src/worker.o

EXTENSION = dedup_ext
DATA = dedup_ext--1.0.sql dedup_ext--1.0--1.1.sql dedup_ext--1.1--1.2.sql dedup_ext--1.2--1.3.sql dedup_ext--1.3--1.4.sql dedup_ext--1.4--1.5.sql dedup_ext--1.5--1.6.sql
PGFILEDESC = "dedup_ext - safe, reversible de-duplication"

PG_CPPFLAGS = -I$(srcdir)/src

REGRESS = upgrade install audit photos payments soft_delete nulls collations candidates refusals privileges transactions quoting merge backfill rewrite rerun rollback_later background
REGRESS_OPTS = --inputdir=.
ISOLATION = background_writers background_control background_merge background_pages background_twice background_one background_merge_rows background_backfill_constraints rollback_writers
TAP_TESTS = 1

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the shared headers (PGXS tracks no header dependencies)
$(OBJS): src/dedup_ext.h src/compat.h
