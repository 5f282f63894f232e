"""Whether an explain run's attributions add up to the output change they explain.

An individual's attributions should sum to ``F(x) - F(baseline)``; the convergence delta (``OUT.h5``
``delta``) is what they miss by. :func:`delta_summary` is the log line over a run's individuals
and :func:`warn_if_not_converged` says on the terminal when the median delta is large against the
median change.
"""

from __future__ import annotations

import numpy as np

from phenoclip.progress import warn


#: a median |convergence delta| above this share of the median |F(x) - F(baseline)| is warned about
DELTA_WARN_SHARE = 0.1


def warn_if_not_converged(deltas: np.ndarray, change: np.ndarray, method: str) -> None:
    """On the terminal, not only in the log: attributions that do not add up to the change they explain."""
    if not np.isfinite(deltas).any() or not np.isfinite(change).any():
        return
    d, c = float(np.nanmedian(deltas)), float(np.nanmedian(change))
    if d > DELTA_WARN_SHARE * c:
        hint = ("more --steps" if method in ("ig", "noise-tunnel") else
                "--method ig, whose error shrinks with --steps" if method == "deeplift" else "--method ig")
        warn(f"{method}'s attributions do not add up to the output change they explain: the median convergence "
             f"error {d:.3g} is {d / c:.0%} of the median change {c:.3g} (OUT.h5 'delta'); try {hint}" if c > 0 else
             f"{method}: median convergence error {d:.3g} while the output does not change from the baseline")


def delta_summary(deltas: np.ndarray, change: np.ndarray, method: str) -> str:
    """One log line: |convergence delta| over individuals against the size of the explained change."""
    if not np.isfinite(deltas).any():
        return f"convergence delta: none for {method}"
    return (f"convergence delta |sum(attr) - (F(x) - F(baseline))| over {len(deltas)} individuals: median "
            f"{np.nanmedian(deltas):.3g}, 95th percentile {np.nanpercentile(deltas, 95):.3g}, max "
            f"{np.nanmax(deltas):.3g}; for scale, median |F(x) - F(baseline)| {np.nanmedian(change):.3g}")
