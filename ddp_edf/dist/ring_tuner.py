"""Rank 0's running choice between rotating the buffer ring and updating in place.

The shared-memory reducer's ring (reduce.py) pays on a machine where writing a cache line another
core still holds is slow, and costs a few percent where it is not; the development VM is either,
from one minute to the next (docs/performance.md, "The slow state").  So, as Horovod's autotuner
does for its knobs, rank 0 times its steps and every so often tries the other mode:

    exploit  ``period`` steps in the current mode
    probe    ``rounds`` x (``block`` steps in the other mode, ``block`` steps in the current one);
             the first ``settle`` steps of each block are not timed (a vote shows one step late)
    verdict  the other mode's median step time < (1 - margin) x the current mode's: switch, and
             ``period`` back to its minimum; else stay, and ``period`` doubles (up to ``max_period``).
             The margin is ``margin`` (1%) to pause the ring and ``ring_margin`` (5%) to resume it:
             where the ring pays it saves 13-20% (0.76-0.83x in place's step time in 84 probes
             during slow spells; 0.87x since the optimizer's one-pass update), where it does not
             it costs 2-6% (10 probes; ~10% since that update), so a ring verdict
             needs a clear win; with 1% a little noise in one probe put a job on the ring in the
             normal state until the next probe (1024 steps at +4%, once in a 5000-step job).
    early    while in place, ``2 block`` steps whose median is > (1 + jump) x in place's median at
             the last verdict start the probe at once: the slow state makes in-place steps ~25%
             slower, no need to wait out the period.  (Not while rotating: the ring's steps vary by
             10% with the machine's drift, and a slower ring does not mean in place got faster.)

Interleaving short blocks, not comparing one window before with one after, is what makes the
verdict trustworthy: on the development VM the median of 32 steps drifts by ~2% (standard
deviation) from one window to the next, as much as the ring's cost in the normal state.  The
first exploit phase is one block long, so the better mode is found at once.

The vote travels in the step's gradient reduction, so every rank changes mode at the same step;
both modes do the same arithmetic (only where numbers are stored differs), so the choice never
changes a result, only the speed.  Pure bookkeeping: no MPI, no arrays.
"""

from __future__ import annotations

import statistics


class RingTuner:
    def __init__(self, rounds: int = 4, block: int = 16, settle: int = 2, min_period: int = 1024,
                 max_period: int = 4096, margin: float = 0.01, ring_margin: float = 0.05, jump: float = 0.15):
        if (rounds < 1 or not 0 <= settle < block or not 1 <= min_period <= max_period or not 0 <= margin < 1
                or not 0 <= ring_margin < 1 or jump <= 0):
            raise ValueError("RingTuner needs rounds >= 1, 0 <= settle < block, 1 <= min_period <= max_period, "
                             "0 <= margin < 1, 0 <= ring_margin < 1, jump > 0")
        self.rounds, self.block, self.settle, self.jump = rounds, block, settle, jump
        self.margin, self.ring_margin = margin, ring_margin
        self.min_period, self.max_period = min_period, max_period
        self.period = block       # the first probe comes at once
        self.switches = 0
        self._current = True      # the mode being exploited, first the ring: the safe mode when cores are
                                  # slow to share (``rotating`` flips back and forth while probing)
        self._reference = None    # the chosen mode's median step time at the last verdict
        self._begin_exploit()

    def _begin_exploit(self):
        self.rotating = self._current
        self._step = 0            # steps since the current exploit phase began
        self._times = {True: [], False: []}   # probe step times by mode
        self._recent = []         # exploit-phase step times (in place) since the last check against the reference

    @property
    def probing(self) -> bool:
        return self._step >= self.period

    def observe(self, step_seconds: float) -> bool:
        """Record the last step's duration; returns whether the next step should rotate the ring."""
        if self.probing and (self._step - self.period) % self.block >= self.settle:
            self._times[self.rotating].append(step_seconds)
        elif not self.probing and not self._current and self._reference is not None:
            self._recent.append(step_seconds)
            if len(self._recent) == 2 * self.block:  # has the machine changed since the last verdict?
                if statistics.median(self._recent) > (1 + self.jump) * self._reference:
                    self.period = self._step + 1     # probe from the next step on
                self._recent = []
        self._step += 1
        if self._step == self.period + 2 * self.rounds * self.block:
            self._verdict()
        elif self.probing:
            block = (self._step - self.period) // self.block   # even: the other mode, odd: the current
            self.rotating = self._current if block % 2 else not self._current
        return self.rotating

    def _verdict(self):
        other = statistics.median(self._times[not self._current])
        current = statistics.median(self._times[self._current])
        margin = self.margin if self._current else self.ring_margin   # to in place, or to the ring
        if other < (1 - margin) * current:        # the other mode is faster now: stay there
            self._current = not self._current
            self.switches += 1
            self.period = self.min_period
            self._reference = other
        else:                                     # it is not: look again later
            self.period = min(max(2 * self.period, self.min_period), self.max_period)
            self._reference = current
        self._begin_exploit()
