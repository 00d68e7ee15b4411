/* faults.c - the seeded, deterministic fault plan.
 *
 * Decisions depend only on (seed, rule, visit number), never on time or
 * thread, so a run replays given the same order of calls.  The plan is for
 * tests: its lock is taken only while rules exist, which the hot path tests
 * with one relaxed load.
 */
#include "internal.h"

void cc_faults_init(cc_fault_plan *plan)
{
    cc_mutex_init(&plan->lock);
    atomic_init(&plan->nrules, 0);
    atomic_init(&plan->injected, 0);
    plan->seed = 0;
}

void cc_faults_destroy(cc_fault_plan *plan) { cc_mutex_destroy(&plan->lock); }

/* splitmix64's finaliser: a well-mixed hash of the visit. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

unsigned cc_faults_visit(cc_host *host, cc_fault_point point)
{
    cc_fault_plan *plan = &host->faults;
    unsigned fired = 0;
    cc_mutex_lock(&plan->lock);
    int n = atomic_load_explicit(&plan->nrules, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        cc_fault_rule *r = &plan->rules[i];
        if (r->point != point)
            continue;
        uint64_t k = ++r->visits;
        bool fire;
        if (r->every_nth)
            fire = k % r->every_nth == 0;
        else
            fire = (double)(mix(plan->seed ^ mix((uint64_t)i << 56 ^ k)) >> 11) * 0x1p-53
                   < r->probability;
        if (fire) {
            fired |= 1u << r->action;
            atomic_fetch_add_explicit(&plan->injected, 1, memory_order_relaxed);
        }
    }
    cc_mutex_unlock(&plan->lock);
    return fired;
}

cc_status cc_host_fault_add(cc_host *host, cc_fault_point point, cc_fault_action action,
                            uint32_t every_nth, double probability)
{
    if (!host || (unsigned)point > CC_FAULT_AT_END || (unsigned)action > CC_FAULT_NOMEM)
        return CC_E_INVALID_ARG;
    if (action == CC_FAULT_NOMEM && point == CC_FAULT_AT_END)
        return CC_E_INVALID_ARG;
    if (!(probability >= 0.0 && probability <= 1.0) || (every_nth == 0 && probability == 0.0))
        return CC_E_INVALID_ARG;
    cc_fault_plan *plan = &host->faults;
    cc_status st = CC_OK;
    cc_mutex_lock(&plan->lock);
    int n = atomic_load_explicit(&plan->nrules, memory_order_relaxed);
    if (n == CC_MAX_FAULT_RULES) {
        st = CC_E_NOMEM;
    } else {
        plan->rules[n] = (cc_fault_rule){point, action, every_nth, probability, 0};
        atomic_store_explicit(&plan->nrules, n + 1, memory_order_relaxed);
    }
    cc_mutex_unlock(&plan->lock);
    return st;
}

cc_status cc_host_fault_reset(cc_host *host, uint64_t seed)
{
    if (!host)
        return CC_E_INVALID_ARG;
    cc_mutex_lock(&host->faults.lock);
    atomic_store_explicit(&host->faults.nrules, 0, memory_order_relaxed);
    atomic_store_explicit(&host->faults.injected, 0, memory_order_relaxed);
    host->faults.seed = seed;
    cc_mutex_unlock(&host->faults.lock);
    return CC_OK;
}

uint64_t cc_host_fault_count(const cc_host *host)
{
    return host ? atomic_load_explicit(&((cc_host *)host)->faults.injected,
                                       memory_order_relaxed)
                : 0;
}
