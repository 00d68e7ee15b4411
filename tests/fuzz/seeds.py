#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the API fuzzer (tests/fuzz/corpus/) and
the reproducers of known core bugs (tests/fuzz/regressions/).

The byte encoding is fuzz_api.c's step(): one opcode byte, then its
arguments.  Run from anywhere: python3 tests/fuzz/seeds.py
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent

# opcodes (fuzz_api.c step())
CREATE, OPEN, CLOSE, ABORT, RESET, FREE, SET_TIMEOUT, CH_OPEN, CH_FAULT, CH_CLOSE = range(10)
BEGIN, BEGIN_W, REGISTER, SHUTDOWN, END, READ, FAULT_ADD, FAULT_RESET, STATS, REPORT = range(10, 20)
NULLS, SET_BINDING = 23, 24
UNBOUND = 0x20        # CREATE's byte: no binding function
WRONG_END = 0x70      # END's op byte: call the other kind's end function
# callback actions (fuzz_api.c A_*)
(NONE, END_SELF, END_OTHER, FAULT_OWN, FAULT_CH, ABORT_OWN, ABORT_HOST, REG_OTHER, A_BEGIN,
 A_BEGIN_W, READ_OTHER, READ_SELF, REG_SELF, CLOSE_OWN, CLOSE_HOST, A_REPORT, A_STATS, A_SHUT_CH,
 END_SELF_TWICE, OPEN_HOST, RESET_HOST, A_SHUT_OWN_CH, CLOSE_OWN_CH, CLOSE_CH) = range(24)
STALE = 0x80          # op byte: a stale handle
FREE_FN, PRIMARY_END_SELF = 1, 2   # registration flags
WRONG_API = 0xc0      # registration flag: the other kind's register function


def reg(flags=0, a0=(NONE, 0), a1=(NONE, 0), fa=(NONE, 0)):
    """A registration's 7 bytes: flags, two cancel actions, a free-state action."""
    return [flags, *a0, *a1, *fa]


def host_up(h=0):
    return [CREATE, 0, OPEN, h]


def fault_add(h, point, action, nth_idx, p_idx):
    return [FAULT_ADD, h, point | action << 3, nth_idx, p_idx]


SEEDS = {
    # a host's life: begin, register with free-state, abort, end, stats, close, reset, reopen
    "life": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, REGISTER, 0, *reg(FREE_FN), READ, 0, ABORT, 0,
                         READ, 0, END, 0, STATS, 0, CLOSE, 0, 0, RESET, 0, OPEN, 0, CH_OPEN, 0, 0,
                         FREE, 0],
    # close with operations in flight: the timeout escalates to an abort whose
    # callbacks end their own operations (G8)
    "close_escalates": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, BEGIN, 0,
                                    REGISTER, 0, *reg(FREE_FN | PRIMARY_END_SELF),
                                    REGISTER, 1, *reg(FREE_FN | PRIMARY_END_SELF, a1=(END_OTHER, 0)),
                                    CLOSE, 0, 1, STATS, 0],
    # the fault plan faults the channel at begin; registration runs the callback (G3)
    "plan_begin": host_up() + [CH_OPEN, 0, 0] + fault_add(0, 0, 0, 1, 0) +
                  [BEGIN, 0, READ, 0, REGISTER, 0, *reg(FREE_FN, a0=(READ_SELF, 0)), END, 0, STATS, 0],
    # a second registration fails and its free-state never runs (G2)
    "second_registration": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, REGISTER, 0, *reg(FREE_FN),
                                        REGISTER, 0, *reg(FREE_FN), CH_FAULT, 0, END, 0],
    # stale handles: reads, end, register and visit on an ended operation (G10)
    "stale": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, END, 0, READ, STALE, END, STALE,
                          REGISTER, STALE, *reg(FREE_FN), SHUTDOWN, 1, BEGIN, 0, READ, STALE,
                          END, 0],
    # callbacks that call back in: a fault on one channel aborts the host, whose
    # callbacks end other operations and register on them (G11)
    "reentrant": host_up() + [CH_OPEN, 0, 0, CH_OPEN, 0, 0, BEGIN, 0, BEGIN, 1, BEGIN, 1,
                              REGISTER, 0, *reg(FREE_FN, a0=(ABORT_OWN, 0), a1=(END_OTHER, 1)),
                              REGISTER, 1, *reg(FREE_FN, a0=(END_SELF, 0), fa=(A_BEGIN, 0)),
                              CH_FAULT, 0, REG_OTHER if False else READ, 2,
                              REGISTER, 2, *reg(0, a0=(REG_SELF, 0), a1=(READ_OTHER, 0)),
                              *reg(), END, 2, STATS, 0],
    # watched operations on a channel the plan faults at every second begin:
    # a CANCELED notice inside cc_op_begin_watched (handle not returned yet),
    # G3 through the binding (RUN_USER inside register_watched), ends that
    # hand back the key
    "begin_watched_plan": host_up() + [CH_OPEN, 0, 0] + fault_add(0, 0, 1, 2, 0) +
                          [BEGIN_W, 0, BEGIN_W, 0, REGISTER, 1, *reg(FREE_FN, a0=(END_SELF, 0)),
                           REGISTER, 0, *reg(FREE_FN, a0=(CLOSE_OWN, 0)), END, 0, STATS, 0],
    # a watched op's life: register (key), abort (CANCELED|RUN_USER), end
    # (the key back: free-state due), stats by name and latency
    "watched_life": host_up() + [CH_OPEN, 0, 0, BEGIN_W, 0, REGISTER, 0, *reg(FREE_FN),
                                 READ, 0, ABORT, 0, READ, 0, END, 0, STATS, 0, CLOSE, 0, 0],
    # one abort, one batch: watched ops that end themselves inside it
    # (CC_END_DEFERRED, then ENDED|FREE_DUE), one ending a batch-mate, an END
    # rule firing at every finish (deferred ones included), a C op in the mix
    "watched_batch": host_up() + [CH_OPEN, 0, 0, CH_OPEN, 0, 0] + fault_add(0, 2, 0, 2, 0) +
                     [BEGIN_W, 0, BEGIN_W, 0, BEGIN_W, 1, BEGIN, 1, BEGIN_W, 1,
                      REGISTER, 0, *reg(FREE_FN | PRIMARY_END_SELF),
                      REGISTER, 1, *reg(PRIMARY_END_SELF, a1=(END_OTHER, 2)),
                      REGISTER, 2, *reg(FREE_FN, a0=(READ_OTHER, 1)),
                      REGISTER, 3, *reg(FREE_FN | PRIMARY_END_SELF, a1=(END_OTHER, 4)),
                      ABORT, 0, STATS, 0, END, 2, END, 4, STATS, 0],
    # mixing kinds: the wrong register/end function is refused, a C callback
    # ends a watched op whose notice is queued (overtaken: no notice), the
    # binding's user callback faults another channel (a nested batch)
    "watched_mixed": host_up() + [CH_OPEN, 0, 0, CH_OPEN, 0, 0, BEGIN, 0, BEGIN_W, 0, BEGIN_W, 1,
                                  REGISTER, 1, *reg(FREE_FN | WRONG_API),
                                  REGISTER, 0, *reg(FREE_FN | WRONG_API),
                                  REGISTER, 0, *reg(FREE_FN, a0=(END_OTHER, 1)),
                                  REGISTER, 2, *reg(FREE_FN, a0=(FAULT_CH, 0), a1=(READ_SELF, 0)),
                                  END, 1 | WRONG_END, CH_FAULT, 1, STATS, 0, END, 0, END, 2, STATS, 0],
    # a host without a binding refuses watched begins until one is set
    "watched_unbound": [CREATE, UNBOUND, OPEN, 0, CH_OPEN, 0, 0, BEGIN_W, 0, SET_BINDING, 0, 1,
                        BEGIN_W, 0, REGISTER, 0, *reg(0, a0=(END_SELF, 0)), CH_FAULT, 0, STATS, 0,
                        SET_BINDING, 0, 0, BEGIN_W, 0, NULLS],
    # a channel shut down: refuses begins and faults, reads CLOSED, leaves
    # channels_open; its operations go on; close releases the handle
    "shutdown": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, REGISTER, 0, *reg(FREE_FN),
                             SHUTDOWN, 0, BEGIN, 0, CH_FAULT, 0, STATS, 0, SHUTDOWN, 0, ABORT, 0,
                             CH_CLOSE, 0, END, 0, STATS, 0],
    # NOMEM at begin and at register, probability rules, rule validation
    "plan_nomem": host_up() + [CH_OPEN, 0, 0] + fault_add(0, 0, 2, 2, 0) + fault_add(0, 1, 2, 0, 2) +
                  fault_add(0, 2, 2, 1, 0) + fault_add(0, 3, 0, 1, 0) + fault_add(0, 0, 0, 0, 8) +
                  [BEGIN, 0, BEGIN, 0, BEGIN, 0, REGISTER, 0, *reg(FREE_FN), REGISTER, 0,
                   *reg(FREE_FN), SHUTDOWN, 6, END, 0, FAULT_RESET, 0, 7, NULLS],
    # two hosts: a callback of one aborts and closes the other (idle) host
    "two_hosts": host_up(0) + host_up(1) + [CH_OPEN, 0, 0, CH_OPEN, 1, 0, BEGIN, 0,
                                           REGISTER, 0, *reg(FREE_FN, a0=(ABORT_HOST, 1), a1=(CLOSE_HOST, 1)),
                                           ABORT, 0, END, 0, STATS, 1, SET_TIMEOUT, 0, 3,
                                           CLOSE, 0, 3, FREE, 1, REPORT, 0],
    # a registration's fault (REGISTER point) runs another op's callback, which
    # ends the registering op: the end is deferred, the registration fails
    "end_during_registration": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, BEGIN, 0,
                                            REGISTER, 0, *reg(FREE_FN, a0=(END_OTHER, 1))] +
                               fault_add(0, 1, 0, 1, 0) +
                               [REGISTER, 1, *reg(FREE_FN), READ, 1, END, 0, STATS, 0],
    # a callback closes its own channel's handle and ends itself; the channel
    # lives on until its last operation ends
    "close_channel_in_callback": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, BEGIN, 0,
                                              REGISTER, 0, *reg(FREE_FN, a0=(CLOSE_OWN_CH, 0), a1=(END_SELF, 0)),
                                              REGISTER, 1, *reg(FREE_FN, fa=(A_STATS, 0)),
                                              CH_FAULT, 0, STATS, 0, ABORT, 0, END, 1, STATS, 0],
}

REGRESSIONS = {
    # FIXED end_cb_stale: a callback run by the plan's END point reads its
    # own operation: the core answered CC_E_INVALID_OPERATION (stale)
    "end_cb_stale": host_up() + [CH_OPEN, 0, 0] + fault_add(0, 2, 0, 1, 0) +
                    [BEGIN, 0, REGISTER, 0, *reg(FREE_FN, a0=(READ_SELF, 0)), END, 0],
    # FIXED close_overflow: cc_host_close(host, 9223372036853) computed
    # now + 9223372036853000000 ns: signed overflow (UBSan)
    "close_overflow": host_up() + [CLOSE, 0, 7],
    # FIXED deferred_end_visit: an operation ends itself from inside its
    # cancel callback; with an END rule firing every time, its end was never
    # visited (the plan's count stayed 0)
    "deferred_end_visit": host_up() + [CH_OPEN, 0, 0] + fault_add(0, 2, 1, 1, 0) +
                          [BEGIN, 0, REGISTER, 0, *reg(FREE_FN | PRIMARY_END_SELF), ABORT, 0, STATS, 0],
    # FIXED watched_g3_queued (main e081621): an abort runs C op0's callback
    # before the batch holding watched op1; the callback registers on op1
    # (canceled): RUN_USER in place (G3), once the core waited for itself.
    "watched_g3_queued": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, BEGIN_W, 0,
                                      REGISTER, 0, *reg(FREE_FN, a0=(REG_OTHER, 1)),
                                      ABORT, 0, *reg(FREE_FN),  # (read by the callback)
                                      END, 0, END, 1],
    # FIXED watched_end_queued (main e081621): the same fan-out, op0's C
    # callback ends watched op1 (registered) and op2 (not), queued for the
    # batch: they are overtaken; once the end waited for this thread's batch.
    "watched_end_queued": host_up() + [CH_OPEN, 0, 0, BEGIN_W, 0, BEGIN, 0, BEGIN_W, 0,
                                       REGISTER, 1, *reg(FREE_FN, a0=(END_OTHER, 0), a1=(END_OTHER, 2)),
                                       REGISTER, 0, *reg(FREE_FN),
                                       ABORT, 0, STATS, 0],
}


# Open core bugs (not replayed by ctest: they hang while the bug is there).
# known/batch_finish_hold is libFuzzer's input, not written here.
KNOWN = {
    # OPEN g3_end_queued: an abort runs C op0's callback before the batch
    # holding watched op1; the callback registers on op1 (G3 runs in place,
    # the queued run counts as started) and then ends it: the end waits for
    # this thread's own batch.  CC_FUZZ_STRICT=g3_end_queued makes the end.
    "g3_end_queued": host_up() + [CH_OPEN, 0, 0, BEGIN, 0, BEGIN_W, 0,
                                  REGISTER, 0, *reg(FREE_FN, a0=(REG_OTHER, 1), a1=(END_OTHER, 1)),
                                  ABORT, 0, *reg(FREE_FN),  # (read by the callback)
                                  END, 0, END, 1, STATS, 0],
}


def mt_seeds():
    """Inputs of the two-thread target (fuzz_mt.c): a flags byte, then the
    main thread's script and the helper's (equal halves), from a fixed
    pseudo-random stream: the main thread begins operations and registers
    (callbacks that end their own operation, sleep); the helper naps first,
    then registers, reads and ends, faults a channel and aborts late."""
    import random
    rnd = random.Random(20261128)
    r8 = lambda: rnd.randrange(256)
    out = {}
    for i in range(6):
        main = []
        for _ in range(8):
            main += [0, r8()]                                     # begin
        for _ in range(6):
            main += [1, r8(), rnd.choice([3, 7, 0x0f, 0x2e, 1])]  # register
        for _ in range(8):
            main += [rnd.choice([2, 3, 5, 6, 7]), r8(), r8()]
        helper = [5, 0x1f] * 3                                    # nap
        for _ in range(10):
            helper += [rnd.choice([2, 3, 4, 4]), r8(), rnd.choice([3, 7, 0x0f, 1])]
        helper += [1, r8(), 5, 0x10, 0, 0] + [2, r8(), 3, r8()] * 3   # fault, abort, end, read
        while len(main) < len(helper):
            main += [5, 0]
        while len(helper) < len(main):
            helper += [5, 0]
        flags = [i | 0x08 * (i % 3) | (0x80 if i >= 4 else 0)]
        out[f"mt_{i}"] = flags + main + helper
    return out


def main() -> None:
    for folder, seeds in (("corpus", SEEDS), ("regressions", REGRESSIONS), ("known", KNOWN),
                          ("corpus_mt", mt_seeds())):
        d = HERE / folder
        d.mkdir(exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(bytes(b & 0xFF for b in data))


if __name__ == "__main__":
    main()
