#!/bin/sh
# Reports which known core bugs (tests/fuzz/README.md) are still present:
# each reproducer input is replayed with its known-bug switch turned into a
# check, and the C reproducers are run.  Informational: always exits 0.
# usage: known_bugs.sh path/to/cc_fuzz dir/with/cc_repro_programs
fuzz=$1
repros=$2
dir=$(dirname "$0")/regressions
say() { if [ "$2" = 0 ]; then echo "$1: fixed or not reproduced (turn its switch off: tests/fuzz/README.md)"; else echo "$1: STILL PRESENT"; fi; }
for bug in end_cb_stale close_overflow deferred_end_visit; do
  CC_FUZZ_STRICT=$bug "$fuzz" "$dir/$bug" >/dev/null 2>&1
  say $bug $?
done
"$repros/cc_repro_stale_per_thread" >/dev/null 2>&1
say stale_per_thread $?
"$repros/cc_repro_visit_race" 3 >/dev/null 2>&1
say visit_race $?
"$repros/cc_repro_g3_vs_end" 5 >/dev/null 2>&1
say g3_vs_end $?
exit 0
