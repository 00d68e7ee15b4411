/*
 * main.c - cc_bench: runs every shape on cancelcore and on the two anchors,
 * repetition by repetition, and prints medians and ratios.
 *
 *   cc_bench           full run (about 30 s on a 2-core VM)
 *   cc_bench --quick   under a second: a smoke test, figures are rough
 *
 * Exit status 0 when every count was verified; speed is reported, never
 * asserted.  1 when a model broke its guarantees (bench_fail), 2 on a bad
 * command line.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

enum { MODEL_CC, MODEL_A, MODEL_B, N_MODELS };
static const char *const model_names[N_MODELS] = {"cancelcore", "anchor (a)", "anchor (b)"};

enum { MAX_REPS = 15 }; /* at most, per shape */

typedef double (*shape_fn)(uint64_t n);

/* One row of the table. */
typedef struct shape {
    const char *name;
    const char *unit;
    shape_fn fn[N_MODELS];
    uint64_t n;          /* operations per repetition */
    uint64_t warmup_n;   /* operations of the untimed warm-up round */
    int reps;
    double target;       /* ratio to meet against the best anchor; 0: none */
    double median[N_MODELS], min[N_MODELS], max[N_MODELS];
} shape;

/* The fan-out functions take a 32-bit count (per-operation arrays). */
static double cc_fanout(uint64_t n) { return cc_shape_fanout((uint32_t)n); }
static double a_fanout(uint64_t n) { return anchor_a_fanout((uint32_t)n); }
static double b_fanout(uint64_t n) { return anchor_b_fanout((uint32_t)n); }

typedef struct config {
    int quick;
    int reps, fanout_reps;
    uint64_t checks, cycles, cycles2, fanout_ops, memory_ops;
} config;

static config make_config(int quick)
{
    if (quick)
        return (config){.quick = 1, .reps = 3, .fanout_reps = 2,
                        .checks = 2000000, .cycles = 200000, .cycles2 = 100000,
                        .fanout_ops = 100000, .memory_ops = 100000};
    return (config){.quick = 0, .reps = 7, .fanout_reps = 5,
                    .checks = 100000000, .cycles = 5000000, .cycles2 = 4000000,
                    .fanout_ops = 1000000, .memory_ops = 1000000};
}

/* Warms every model up once, then runs `reps` repetitions; within each
 * repetition the three models run back to back, in an order that rotates,
 * so that a noisy stretch of the machine falls on all of them alike. */
static void run_shape(shape *s)
{
    double samples[N_MODELS][MAX_REPS];

    for (int m = 0; m < N_MODELS; m++)
        (void)s->fn[m](s->warmup_n);
    for (int r = 0; r < s->reps; r++)
        for (int k = 0; k < N_MODELS; k++) {
            int m = (r + k) % N_MODELS;
            samples[m][r] = s->fn[m](s->n);
        }
    for (int m = 0; m < N_MODELS; m++) {
        s->median[m] = bench_median(samples[m], s->reps); /* sorts */
        s->min[m] = samples[m][0];
        s->max[m] = samples[m][s->reps - 1];
    }
}

static void run_shape_cb(void *s) { run_shape((shape *)s); }

static void *no_op_thread(void *arg) { return arg; }

/* glibc and libstdc++ take cheaper paths while a process has never had a
 * second thread: malloc skips its arena locks, and libstdc++ 12's
 * std::stop_source::request_stop skips, per callback it runs, the
 * std::binary_semaphore release that wakes a ~stop_callback waiting on
 * another thread -- a futex system call every time.  A server always has
 * threads, and the 2-thread shape would flip the switch halfway through the
 * run, so one thread is started before the main measurements; the abort
 * fan-out is also measured in a child process that never had one, to show
 * the anchors without that cost. */
static void leave_single_threaded_mode(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, no_op_thread, NULL) != 0)
        bench_fail("pthread_create failed");
    pthread_join(t, NULL);
}

static void print_header(const config *c)
{
    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    printf("cc_bench: cancelcore %s against C++20 std::stop_source anchors\n",
           cc_version_string());
    printf("machine:  %s, %ld CPUs online\n", cpu, sysconf(_SC_NPROCESSORS_ONLN));
#if defined(__clang__)
    printf("C:        clang %s\n", __clang_version__);
#elif defined(__GNUC__)
    printf("C:        gcc %s\n", __VERSION__);
#endif
    printf("C++:      %s, %s\n", anchor_cxx_compiler(), anchor_cxx_library());
    printf("run:      %s: medians of %d repetitions (fan-out: %d of %llu ops), "
           "after one warm-up round\n",
           c->quick ? "--quick (smoke test, rough figures)" : "full",
           c->reps, c->fanout_reps, (unsigned long long)c->fanout_ops);
    printf("anchor (a): one std::stop_source per operation, pointers kept in a "
           "std::mutex-guarded slot registry\n");
    printf("anchor (b): a host std::stop_source and one per channel, one "
           "std::stop_callback on each per operation\n\n");
    fflush(stdout);
}

static void print_table(shape *rows, int nrows)
{
    printf("%-26s | %-12s | %10s | %10s | %10s | %-14s | %-8s | %s\n", "shape",
           "unit", "cancelcore", "anchor (a)", "anchor (b)", "vs best anchor",
           "target", "verdict");
    printf("---------------------------+--------------+------------+------------"
           "+------------+----------------+----------+--------\n");
    for (int i = 0; i < nrows; i++) {
        const shape *s = &rows[i];
        int best = s->median[MODEL_A] <= s->median[MODEL_B] ? MODEL_A : MODEL_B;
        double ratio = s->median[MODEL_CC] / s->median[best];
        char ratio_s[32], target_s[16];
        snprintf(ratio_s, sizeof ratio_s, "%.2fx (%s)", ratio,
                 best == MODEL_A ? "a" : "b");
        if (s->target > 0)
            snprintf(target_s, sizeof target_s, "<= %.1fx", s->target);
        else
            snprintf(target_s, sizeof target_s, "none");
        printf("%-26s | %-12s | %10.2f | %10.2f | %10.2f | %-14s | %-8s | %s\n",
               s->name, s->unit, s->median[MODEL_CC], s->median[MODEL_A],
               s->median[MODEL_B], ratio_s, target_s,
               s->target <= 0 ? "info" : ratio <= s->target ? "meets" : "MISSES");
    }
    printf("\nspread over the repetitions (min .. max, same unit):\n");
    for (int i = 0; i < nrows; i++) {
        const shape *s = &rows[i];
        printf("  %-26s", s->name);
        for (int m = 0; m < N_MODELS; m++)
            printf("  %s %.2f .. %.2f", model_names[m], s->min[m], s->max[m]);
        printf("\n");
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cc_bench [--quick]\n"
               "  measures cancelcore against two C++20 std::stop_source anchors\n"
               "  --quick  fewer iterations (a smoke test of a few seconds)\n");
}

int main(int argc, char **argv)
{
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "cc_bench: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    config c = make_config(quick);
    setvbuf(stdout, NULL, _IOLBF, 0);
    print_header(&c);

    shape rows[] = {
        {"is-canceled check", "ns/check",
         {cc_shape_is_canceled, anchor_a_is_canceled, anchor_b_is_canceled},
         c.checks, c.checks / 10, c.reps, 0, {0}, {0}, {0}},
        {"cycle, 1 thread", "ns/cycle",
         {cc_shape_cycle1, anchor_a_cycle1, anchor_b_cycle1},
         c.cycles, c.cycles / 10, c.reps, 1.0, {0}, {0}, {0}},
        {"cycle, 2 threads", "ns/cycle/thr",
         {cc_shape_cycle2, anchor_a_cycle2, anchor_b_cycle2},
         c.cycles2, c.cycles2 / 10, c.reps, 1.0, {0}, {0}, {0}},
        {"abort fan-out, threaded", "ns/op",
         {cc_fanout, a_fanout, b_fanout},
         c.fanout_ops, c.fanout_ops / 10, c.fanout_reps, 1.5, {0}, {0}, {0}},
        {"abort fan-out, no threads", "ns/op",
         {cc_fanout, a_fanout, b_fanout},
         c.fanout_ops, c.fanout_ops / 10, c.fanout_reps, 1.5, {0}, {0}, {0}},
    };
    enum { N_ROWS = sizeof rows / sizeof rows[0], ROW_NO_THREADS = N_ROWS - 1 };

    /* Before this process starts any thread (see leave_single_threaded_mode). */
    printf("measuring: %s (in a child process) ...\n", rows[ROW_NO_THREADS].name);
    bench_run_in_child(run_shape_cb, &rows[ROW_NO_THREADS], sizeof rows[ROW_NO_THREADS]);
    leave_single_threaded_mode();

    /* Then, while the C allocator has recycled nothing yet (see bench.h). */
    double rss_per_op, malloc_per_op;
    cc_measure_memory((uint32_t)c.memory_ops, &rss_per_op, &malloc_per_op);

    for (int i = 0; i < ROW_NO_THREADS; i++) {
        printf("measuring: %s ...\n", rows[i].name);
        run_shape(&rows[i]);
    }
    printf("\n");
    print_table(rows, N_ROWS);

    const shape *two = &rows[2];
    printf("\ncycle, 2 threads, aggregate (both threads): cancelcore %.1f, "
           "anchor (a) %.1f, anchor (b) %.1f million cycles/s\n",
           2e3 / two->median[MODEL_CC], 2e3 / two->median[MODEL_A],
           2e3 / two->median[MODEL_B]);
    printf("memory per in-flight operation (cancelcore, %llu ops begun and "
           "registered over %d channels):\n"
           "  RSS +%.1f bytes/op, C allocator +%.1f bytes/op; target <= 64 bytes "
           "(RSS): %s\n",
           (unsigned long long)c.memory_ops, BENCH_FANOUT_CHANNELS, rss_per_op,
           malloc_per_op, rss_per_op <= 64.0 ? "meets" : "MISSES");
    printf("\nnotes:\n"
           "  - ratios are cancelcore / the better anchor; below 1 is faster.\n"
           "  - every row but the last runs in a process that has started threads,\n"
           "    as a server has.  The last row runs in a child process that never\n"
           "    had one: there libstdc++'s request_stop skips a futex wake system\n"
           "    call per callback it runs (std::binary_semaphore::release).\n"
           "  - is-canceled: cc_op_is_canceled is a call into the library; the\n"
           "    anchors' stop_requested() is inlined (anchor (b) reads two tokens).\n"
           "  - fan-out: cancelcore and anchor (b) spread the operations over %d\n"
           "    channels; only the abort call is timed, per operation canceled.\n"
           "  - every count was verified after each run (cancel once, free-state once).\n",
           BENCH_FANOUT_CHANNELS);
    return 0;
}
