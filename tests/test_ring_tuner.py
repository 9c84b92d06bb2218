"""Rank 0's ring tuner against simulated machines whose step time depends on the mode and on time."""

import numpy as np
import pytest

from ddp_edf.dist.ring_tuner import RingTuner


def simulate(tuner, step_time, steps, seed=0, jitter=0.03):
    """Feed ``tuner`` the times a machine gives; returns the mode of every step (True = rotating).

    ``step_time(step, rotating)`` is the machine's noiseless time; multiplicative noise is added.
    The mode a vote selects shows one step later, as in the trainer (the update of the step that
    carried the vote, then the next step's forward and backward)."""
    rng = np.random.default_rng(seed)
    modes, rotating, previous = [], True, True
    for step in range(steps):
        effective = rotating and previous       # a switch costs the first step a mix of both
        seconds = step_time(step, effective) * (1 + jitter * rng.standard_normal())
        modes.append(rotating)
        previous = rotating
        rotating = tuner.observe(seconds)
    return np.array(modes)


def probe_share(tuner):
    """The share of steps a settled tuner spends in the other mode (half of each probe)."""
    return tuner.rounds * tuner.block / (tuner.max_period + 2 * tuner.rounds * tuner.block)


def steady(ring_ms, in_place_ms):
    return lambda step, rotating: (ring_ms if rotating else in_place_ms) * 1e-3


def test_settles_on_in_place_when_it_is_faster_and_probes_ever_more_rarely():
    tuner = RingTuner()
    modes = simulate(tuner, steady(ring_ms=1.48, in_place_ms=1.43), 60_000)   # the ring costs 3.5%
    first_verdict = tuner.block + 2 * tuner.rounds * tuner.block
    assert modes[:tuner.block].all() and not modes[first_verdict:first_verdict + 1000].any()
    assert modes[first_verdict:].mean() < 1.2 * probe_share(tuner)   # in place but for the probes
    assert tuner.period == tuner.max_period and tuner.switches == 1


def test_keeps_the_ring_when_it_is_faster():
    tuner = RingTuner()
    modes = simulate(tuner, steady(ring_ms=1.50, in_place_ms=1.90), 40_000)   # the slow state
    assert modes.mean() > 1 - 1.2 * probe_share(tuner)
    assert tuner.switches == 0 and tuner.period == tuner.max_period


def test_follows_the_machine_when_its_state_changes():
    """Normal (in place faster) for 20k steps, slow (ring faster) for 20k, normal again."""
    def machine(step, rotating):
        slow = 20_000 <= step < 40_000
        return (1.55 if rotating else 1.90) * 1e-3 if slow else (1.48 if rotating else 1.43) * 1e-3
    tuner = RingTuner()
    modes = simulate(tuner, machine, 60_000)
    probe = 2 * tuner.rounds * tuner.block
    # In place -> slow: in-place steps become 25% slower, which starts a probe within a block.
    assert modes[20_000 + 2 * tuner.block + probe:40_000].mean() > 1 - 1.2 * probe_share(tuner)
    # Ring -> normal: nothing jumps, so the switch waits for the next probe (at most max_period).
    assert modes[40_000 + tuner.max_period + probe:].mean() < 1.2 * probe_share(tuner)
    assert modes[5_000:20_000].mean() < 1.2 * probe_share(tuner)
    assert tuner.switches == 3


def test_slow_drift_of_the_machine_does_not_mislead_it():
    """The machine's pace drifts by +-3% over a few hundred steps (as the development VM's does),
    as much as the difference between the modes: interleaved probes still see the difference."""
    def machine(step, rotating):
        pace = 1 + 0.03 * np.sin(2 * np.pi * step / 700) + 0.02 * np.sin(2 * np.pi * step / 2300)
        return (1.48 if rotating else 1.43) * 1e-3 * pace
    tuner = RingTuner()
    modes = simulate(tuner, machine, 100_000, jitter=0.04)
    assert modes[5_000:].mean() < 1.2 * probe_share(tuner) and tuner.switches <= 3


def correlated_pace(seed, steps, correlation_steps=16, amplitude=0.06):
    """1 + amplitude x an AR(1) process whose correlation decays over ``correlation_steps`` steps:
    noise as slow as a probe's 16-step blocks, which interleaving cannot average out."""
    rng = np.random.default_rng(seed + 1000)
    a = np.exp(-1 / correlation_steps)
    shocks = rng.standard_normal(steps) * np.sqrt(1 - a * a)
    z = np.zeros(steps)
    for k in range(1, steps):
        z[k] = a * z[k - 1] + shocks[k]
    return 1 + amplitude * z


def test_noise_within_a_probe_does_not_put_it_on_the_ring():
    """In place is 3.5% faster, but the machine's pace wanders by +-6% over ~16 steps.  With a 1%
    margin in both directions some probes see the ring ahead and keep it until the next probe; a
    switch to the ring needs a 5% win (where the ring pays it wins ~20%)."""
    steps, seeds = 20_000, range(10)
    machines = [(seed, correlated_pace(seed, steps)) for seed in seeds]

    def switches(**settings):
        counts = []
        for seed, pace in machines:
            tuner = RingTuner(**settings)
            simulate(tuner, lambda step, rotating: (1.48 if rotating else 1.43) * 1e-3 * pace[step], steps, seed=seed)
            counts.append(tuner.switches)
        return counts
    assert switches() == [1] * len(seeds)                  # one switch to in place, never back to the ring
    assert max(switches(ring_margin=0.01)) > 1             # the same noise misleads a symmetric 1% margin


@pytest.mark.parametrize("swing", [0.0, 0.12])
def test_time_spent_probing_the_wrong_mode_is_small(swing):
    """Cost of the tuner where the ring is the right choice and in place 25% slower, also when the
    machine's pace swings by +-12% (steps that get slower while rotating must not start probes)."""
    def machine(step, rotating):
        return (1.50 if rotating else 1.90) * 1e-3 * (1 + swing * np.sin(2 * np.pi * step / 900))
    tuner = RingTuner()
    modes = simulate(tuner, machine, 60_000, jitter=0.02)
    spent = sum(machine(step, m) for step, m in enumerate(modes))
    best = sum(machine(step, True) for step in range(60_000))
    assert spent / best < 1.005


@pytest.mark.parametrize("arguments", [dict(rounds=0), dict(settle=16, block=16), dict(settle=-1),
                                       dict(min_period=0), dict(min_period=9000, max_period=8192),
                                       dict(margin=1.0), dict(ring_margin=-0.1), dict(jump=0)])
def test_rejects_settings_that_cannot_work(arguments):
    with pytest.raises(ValueError, match="RingTuner needs"):
        RingTuner(**arguments)
