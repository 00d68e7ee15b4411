#!/bin/sh
# Reports which open core bugs (tests/fuzz/README.md) are still present: each
# input reproducer (tests/fuzz/known/) is replayed with its known-bug switch
# turned into a check, and the C reproducers are run.  Informational: always
# exits 0.
# usage: known_bugs.sh path/to/cc_fuzz dir/with/cc_repro_programs
fuzz=$1
repros=$2
dir=$(dirname "$0")/known
say() { if [ "$2" = 0 ]; then echo "$1: fixed or not reproduced (turn its switch off: tests/fuzz/README.md)"; else echo "$1: STILL PRESENT"; fi; }
# Cut after 20 s (a deadlock, while the bug was there).
for bug in g3_end_queued; do  # fixed in the core; the model still predicts an overtake
  CC_FUZZ_STRICT=$bug timeout 20 "$fuzz" "$dir/$bug" >/dev/null 2>&1
  say "$bug (fuzz input)" $?
  "$repros/cc_repro_$bug" >/dev/null 2>&1
  say "$bug (C reproducer)" $?
done
exit 0
