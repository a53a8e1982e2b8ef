"""Latency as the pages report it: the fastest runs, and a caveat when the runs disagreed."""

from __future__ import annotations

import pytest

from components.render import NOISY_SPREAD, Timing


def test_a_timing_gives_its_ratio_and_flags_runs_that_disagreed():
    calm = Timing(2.0, 4.0, 1.1)
    assert calm.ratio == pytest.approx(0.5) and not calm.noisy and calm.caveat() is None
    busy = Timing(2.0, 4.0, 3.2)
    assert busy.noisy and "3.20x" in busy.caveat()
    assert not Timing(1.0, 1.0, NOISY_SPREAD).noisy
    # just past the threshold, the caveat must not round the spread back down to it
    assert "1.52x" in Timing(1.0, 1.0, 1.52).caveat()
