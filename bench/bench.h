/*
 * bench.h - the pieces of cc_bench and how they talk to each other.
 *
 * cc_bench measures cancelcore and two C++20 anchor models of the same
 * guarantees in one run, so that the ratios it prints compare figures taken
 * on the same machine at the same moment:
 *
 *   anchor (a) "per-op stop_source": one std::stop_source per operation,
 *       kept in a std::mutex-guarded registry so that abort can find it.
 *   anchor (b) "shared tokens": one host std::stop_source and one per
 *       channel; each operation hangs one std::stop_callback on each.
 *
 * Every model runs the same user callbacks (bench_cancel_cb and
 * bench_free_cb, below), which count what they were called for; each shape
 * checks the counts after its timed run and stops the program with a message
 * when they are wrong, so a broken model can never report a fast nothing.
 *
 * Each shape function runs one repetition and returns its figure in
 * nanoseconds per operation; main.c repeats, takes medians and prints.
 */
#ifndef CC_BENCH_H
#define CC_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "cancelcore.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Keeps the value v alive and acts as a compiler memory barrier, so that a
 * loop whose only effect is reading a flag cannot be hoisted, merged or
 * deleted by the optimizer.  It emits no instruction. */
#define BENCH_USE(v) __asm__ __volatile__("" : : "r"(v) : "memory")

/* ------------------------------------------------------------ timing.c */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

/* The median of v[0..n) (sorts v in place); 0 for n == 0. */
double bench_median(double *v, int n);

/* Resident set size of this process in bytes, from /proc/self/statm. */
uint64_t bench_rss_bytes(void);

/* Bytes the C allocator has handed out and not taken back (heap and mmapped
 * chunks), or 0 where the C library cannot say. */
uint64_t bench_malloc_bytes(void);

/* The CPU model name from /proc/cpuinfo ("unknown" if absent) into buf. */
void bench_cpu_model(char *buf, int size);

/* Prints "cc_bench: FAILED: <message>" on stderr and exits with status 1.
 * Used when a model's counts or a library status are not what the contract
 * says: the benchmark must never report figures for work that did not
 * happen. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noreturn, format(printf, 1, 2)))
#endif
void bench_fail(const char *fmt, ...);

/* ----------------------------------------------------------- isolate.c */

/* Forks; the child runs fn(data) and sends the `size` bytes at data back,
 * which the parent stores at data.  Returns once the child has exited;
 * stops the program if the child failed (its own message is on stderr). */
void bench_run_in_child(void (*fn)(void *data), void *data, size_t size);

/* ---------------------------------------------------------- counters.c */

/* What the user callbacks of one operation (or of one thread's stream of
 * operations) have seen.  Plain counters: each one is only written by one
 * thread at a time in every shape (the cancel side by the aborting thread,
 * the free side by the ending thread, and a cancel happens-before the
 * free-state of its operation by G5). */
typedef struct bench_counts {
    uint32_t cancels;     /* cancel callbacks run */
    uint32_t frees;       /* free-state callbacks run */
    int32_t last_reason;  /* the reason of the last cancel, or CC_NOT_CANCELED */
} bench_counts;

/* The cancel and free-state callbacks of every model: state is a
 * bench_counts.  Out of line, so that every model pays the same indirect
 * call the library's users pay. */
void bench_cancel_cb(cc_reason reason, void *state);
void bench_free_cb(void *state);

/* ---------------------------------------------------------- cc_shapes.c */

/* cancelcore: each returns ns per operation for one repetition.
 *   is_canceled: cc_op_is_canceled on one live, uncanceled operation.
 *   cycle1:      cc_op_begin + cc_op_register_cancel + cc_op_end on one
 *                channel of an open host, one thread.
 *   cycle2:      the same on two threads at once, each on its own channel of
 *                one host; wall time / cycles per thread.
 *   fanout:      time of cc_host_abort with `ops` operations registered,
 *                spread over BENCH_FANOUT_CHANNELS channels, per operation. */
double cc_shape_is_canceled(uint64_t checks);
double cc_shape_cycle1(uint64_t cycles);
double cc_shape_cycle2(uint64_t cycles_per_thread);
double cc_shape_fanout(uint32_t ops);

/* Memory per in-flight operation: the RSS growth (and the C allocator's
 * growth) across beginning and registering `ops` operations on a fresh host,
 * divided by ops.  Run it before anything else big has been allocated and
 * freed, or the C allocator hands back recycled pages and RSS stays flat. */
void cc_measure_memory(uint32_t ops, double *rss_per_op, double *malloc_per_op);

/* How many channels the fan-out shape spreads its operations over (for
 * cancelcore and for anchor (b)); anchor (a) has no channels. */
#define BENCH_FANOUT_CHANNELS 16

/* ---------------------------------------------------------- anchors.cpp */

/* Anchor (a), per-op stop_source in a mutex-guarded registry. */
double anchor_a_is_canceled(uint64_t checks);
double anchor_a_cycle1(uint64_t cycles);
double anchor_a_cycle2(uint64_t cycles_per_thread);
double anchor_a_fanout(uint32_t ops);

/* Anchor (b), shared host and channel stop_sources. */
double anchor_b_is_canceled(uint64_t checks);
double anchor_b_cycle1(uint64_t cycles);
double anchor_b_cycle2(uint64_t cycles_per_thread);
double anchor_b_fanout(uint32_t ops);

/* The C++ compiler and standard library the anchors were built with. */
const char *anchor_cxx_compiler(void);
const char *anchor_cxx_library(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CC_BENCH_H */
