#!/bin/sh
# Reports which known core bugs (tests/fuzz/README.md) are still present:
# each reproducer input is replayed with its known-bug switch turned into a
# check.  Informational: always exits 0.
# usage: known_bugs.sh path/to/cc_fuzz path/to/cc_repro_stale_per_thread
fuzz=$1
repro=$2
dir=$(dirname "$0")/regressions
for bug in end_cb_stale close_overflow deferred_end_visit; do
  if CC_FUZZ_STRICT=$bug "$fuzz" "$dir/$bug" >/dev/null 2>&1; then
    echo "$bug: fixed (turn its switch off in tests/fuzz/fuzz_api.c)"
  else
    echo "$bug: STILL PRESENT"
  fi
done
if "$repro" >/dev/null 2>&1; then
  echo "stale_per_thread: fixed (turn its switch off in tests/fuzz/fuzz_mt.c)"
else
  echo "stale_per_thread: STILL PRESENT"
fi
exit 0
