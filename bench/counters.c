/*
 * counters.c - the user callbacks every model runs.
 *
 * They live in their own translation unit so that no model gets them
 * inlined: cancelcore calls them through function pointers, and so do the
 * anchors (they store the same cc_cancel_fn / cc_free_state_fn pointers).
 */
#include "bench.h"

void bench_cancel_cb(cc_reason reason, void *state)
{
    bench_counts *c = (bench_counts *)state;
    c->cancels++;
    c->last_reason = (int32_t)reason;
}

void bench_free_cb(void *state)
{
    bench_counts *c = (bench_counts *)state;
    c->frees++;
}
