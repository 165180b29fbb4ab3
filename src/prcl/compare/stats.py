"""The statistics of a comparison over seeds: mean ± sample standard deviation, and the paired
difference of two methods trained on the same seeds (same labeled images, same initial weights) with
its paired t statistic (Student's t for the mean of the per-seed differences)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

# Two-sided 5% critical values of Student's t, t_{0.975}(df) (checked against scipy in the tests): a paired
# difference with |t| above the value at its df = n − 1 is significant at p < 0.05.
T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
"""A few rows of the t table; `t_critical_95` falls back to the nearest smaller df (conservative)."""


def t_critical_95(df: int) -> Optional[float]:
    """|t| needed for p < 0.05 (two-sided) at `df` degrees of freedom; None below 1."""
    if df < 1:
        return None
    return T_CRITICAL_95[max(k for k in T_CRITICAL_95 if k <= df)]


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n − 1); the std is None for one value."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
    """`mean ± std` of `values × scale` (the benchmark tables' cell), `x (1 seed)` for one value, `–` for none."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    if std is None:
        return f"{scale * mean:.{digits}f}{unit} (1 seed)"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{unit}"


@dataclass(frozen=True)
class PairedDifference:
    """`method − reference` over the seeds both finished: per seed, their mean, and the paired t."""

    per_seed: dict[int, float]  # seed -> difference
    mean: float
    t: Optional[float]  # None with fewer than 2 seeds; ±inf when every seed differs by the same amount

    @property
    def df(self) -> int:
        return len(self.per_seed) - 1

    @property
    def significant(self) -> Optional[bool]:
        """|t| beyond the two-sided 5% critical value (None when t is undefined)."""
        crit = t_critical_95(self.df)
        if self.t is None or crit is None or math.isnan(self.t):
            return None
        return abs(self.t) > crit


def paired_t(differences: Sequence[float]) -> Optional[float]:
    """t = mean(d) / (sd(d) / √n) for the per-seed differences d (the paired t test's statistic, n − 1 df)."""
    n = len(differences)
    if n < 2:
        return None
    mean, sd = statistics.mean(differences), statistics.stdev(differences)
    if sd == 0.0:
        return math.copysign(math.inf, mean) if mean else math.nan
    return mean / (sd / math.sqrt(n))


def paired_difference(method: Mapping[int, float], reference: Mapping[int, float]) -> Optional[PairedDifference]:
    """The paired difference of two {seed: score} maps over their common seeds; None when none is common."""
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        return None
    per_seed = {s: method[s] - reference[s] for s in seeds}
    diffs = list(per_seed.values())
    return PairedDifference(per_seed, statistics.mean(diffs), paired_t(diffs))
