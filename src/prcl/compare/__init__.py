"""`prcl compare`: methods × label fractions × seeds (× any config key) on any dataset.

- `matrix.py`: the runs of a comparison, their names and resolved configs (bad input fails here);
- `label_fractions.py`: the labeled/unlabeled split lists of each fraction (shipped, or made once);
- `runs.py`: a run's spec and what is on disk for it (reuse, resume, train again);
- `runner.py`: `prcl train` processes, `jobs` at a time, threads or GPUs shared out;
- `results.py`, `stats.py`, `report.py`, `plot.py`: the CSV, the statistics, `results.md`, the curve;
- `cli.py`: the command.
"""

from prcl.compare.matrix import Matrix, build_matrix
from prcl.compare.runner import Outcome, Runner
from prcl.compare.runs import PlannedRun, RunSpec, RunState, plan_run, read_summary
from prcl.compare.stats import PairedDifference, format_mean_std, mean_std, paired_difference, paired_t

__all__ = ["Matrix", "Outcome", "PairedDifference", "PlannedRun", "RunSpec", "RunState", "Runner", "build_matrix",
           "format_mean_std", "mean_std", "paired_difference", "paired_t", "plan_run", "read_summary"]
