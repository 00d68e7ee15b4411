/* handle.c - the process-wide slot pool and generation-checked handles.
 *
 * Slots live in chunks listed in a directory; a chunk, once published, is
 * never freed, so decoding any handle value reads valid memory.  A handle is
 * not a pointer but (generation, index + 1) packed into a pointer-sized
 * value: the index finds the slot, the generation tells whether the slot
 * still holds that operation (G10).
 */
#include "internal.h"

#if UINTPTR_MAX > 0xffffffffu
_Static_assert(sizeof(cc_slot) == 64, "a slot is one cache line");
#endif

cc_slot *_Atomic cc_slot_dir[CC_DIR_SIZE];
static cc_slot *g_free;       /* linked by ->next */
static unsigned g_nfree;
static uint32_t g_nslots;     /* slots in published chunks */

/* Publishes one more chunk of free slots.  Pool lock held. */
static bool grow(void)
{
    if (g_nslots >= CC_MAX_SLOTS)
        return false;
    cc_slot *chunk = cc_pages_alloc(CC_CHUNK_SLOTS * sizeof(cc_slot));
    if (!chunk)
        return false;
    for (uint32_t i = 0; i < CC_CHUNK_SLOTS; i++) {
        cc_slot *s = &chunk[i];
        atomic_init(&s->state, 0);
        s->index = g_nslots + i;
        s->next = i + 1 < CC_CHUNK_SLOTS ? &chunk[i + 1] : g_free;
        s->prev = NULL;
    }
    atomic_store_explicit(&cc_slot_dir[g_nslots >> CC_CHUNK_BITS], chunk, memory_order_release);
    g_free = chunk;
    g_nfree += CC_CHUNK_SLOTS;
    g_nslots += CC_CHUNK_SLOTS;
    return true;
}

unsigned cc_pool_take(cc_slot **head, unsigned n)
{
    cc_pool_lock();
    if (g_nfree < n && !grow() && g_nfree == 0) {
        cc_pool_unlock();
        return 0;
    }
    if (n > g_nfree)
        n = g_nfree;
    cc_slot *first = g_free, *last = g_free;
    for (unsigned i = 1; i < n; i++)
        last = last->next;
    g_free = last->next;
    g_nfree -= n;
    cc_pool_unlock();
    last->next = *head;
    *head = first;
    return n;
}

void cc_pool_give(cc_slot *head, cc_slot *tail, unsigned n)
{
    if (n == 0)
        return;
    cc_pool_lock();
    tail->next = g_free;
    g_free = head;
    g_nfree += n;
    cc_pool_unlock();
}
