"""How often the edge asks for work: fast while there is some, slowly when there is none.

A deployed exchange needs short polls (the SuperNode asks the cloud every 0.1 s, the executor
asks its SuperNode every 0.05 s), but every poll costs CPU on the device and on the cloud's
SuperLink (measured: a 2-edge deployment idling at those polls kept half a core busy). So the
waits stay short while messages keep coming, and after `quiet` seconds without any they grow
by `factor` per poll up to `slow`: an idle device polls about as rarely as Flower's own
SuperNode (3 s), and the first message of the next run waits at most `slow` longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

NODE_IDLE_POLL = 2.0  # the SuperNode's poll of the cloud after 10 s without work (`--idle-poll`)
# seconds, Flower's own (`--heartbeat`; supernode_internals.set_heartbeat_interval)
DEFAULT_HEARTBEAT = 30.0
# The executor's polls stay on loopback (cheap, but not free: 0.05 s polls cost the node ~12% of
# a core); idle, it backs off less far than the node, so a run's first task waits <= 0.5 s more.
TASK_IDLE_POLL = 0.5


class IdleBackoff:
    """The wait before the next poll: `fast` within `quiet` seconds of the last work (`busy`),
    then growing by `factor` per poll up to `slow` (never below `fast`)."""

    def __init__(self, fast: float, slow: float, quiet: float = 10.0, factor: float = 1.5,
                 clock: Callable[[], float] = time.monotonic):
        if not (fast > 0 and quiet >= 0 and factor >= 1):
            raise ValueError(f"bad poll backoff: fast={fast}, quiet={quiet}, factor={factor}")
        self.fast, self.slow = fast, max(slow, fast)
        self.quiet, self.factor, self.clock = quiet, factor, clock
        self.last_work = clock()
        self.wait = fast

    def busy(self) -> None:
        """There was work (a message, a task): poll fast again."""
        self.last_work = self.clock()
        self.wait = self.fast

    def next_wait(self) -> float:
        if self.clock() - self.last_work < self.quiet:
            self.wait = self.fast
        else:
            self.wait = min(self.slow, self.wait * self.factor)
        return self.wait
