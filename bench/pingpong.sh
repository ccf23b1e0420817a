#!/usr/bin/env bash
# bench/pingpong.sh -- what one busy process beside a request/response
# workload costs its latency, by the busy process's priority and scheduling
# policy (the settings a dedup_ext worker could take), without PostgreSQL.
#
#   bash bench/pingpong.sh [--seconds S] [--rounds R] [--pairs P] [--work US]
#
# P client/server pairs (default 4, as the write workload's 4 connections)
# over Unix sockets, each server taking US microseconds of CPU per request
# (default 400), each client sending one every 0.5-4.5 ms; S seconds per
# case (default 5), R rounds (default 4), the cases alternating (see
# bench/pingpong.c).  Any user may run it; needs gcc.  Not a test.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=5
ROUNDS=4
PAIRS=4
WORK_US=400
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --pairs) PAIRS=$2; shift 2 ;;
        --work) WORK_US=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds S] [--rounds R] [--pairs P] [--work US]" >&2; exit 2 ;;
    esac
done
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
gcc -O2 -o "$BIN/pingpong" "$HERE/pingpong.c"
echo "== $PAIRS pairs, $WORK_US us of work per request, $SECS s per case, $ROUNDS rounds; $(nproc) CPUs, kernel $(uname -r)"
"$BIN/pingpong" "$SECS" "$ROUNDS" "$PAIRS" "$WORK_US"
