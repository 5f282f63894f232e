"""Plain progress lines (batch logs) carry the rate and an ETA; resumed work does not inflate the rate."""

from __future__ import annotations

import re

import phenoclip.progress as progress
from phenoclip.progress import Progress


def test_plain_lines_show_rate_samples_and_eta(capsys, monkeypatch):
    clock = iter(float(t) for t in range(0, 1000))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(progress, "QUIET", False)
    with Progress("pretraining", 100, "steps", per_unit=(32, "samples")) as bar:
        bar.skip(50)               # a resumed run: 50 steps done before it started
        for _ in range(50):
            bar.advance(1)         # one second per step
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pretraining:")]
    assert lines, "no progress line"
    first = lines[0]
    m = re.fullmatch(r"pretraining: (\d+)/100 steps \(([\d.]+) s, ([\d.]+) steps/s, ([\d.]+) samples/s, ETA (\d+) s\)",
                     first)
    assert m, first
    done, elapsed, per_s, samples, eta = int(m[1]), float(m[2]), float(m[3]), float(m[4]), int(m[5])
    # the 50 resumed steps are not counted as fast ones: the rate is that of this run
    assert abs(per_s - (done - 50) / elapsed) < 0.01 and abs(samples - 32 * per_s) < 0.1
    assert eta == round((100 - done) / per_s)
    assert lines[-1].startswith("pretraining: 100/100 steps") and "ETA" not in lines[-1]
