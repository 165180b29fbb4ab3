"""What the run says about the classes of its pseudo-labels (issue #35): per-class statistics under class
names, and a warning when the labeler shrinks a class.

A method's `ClassBalance` reports per-class values under keys that end in the class index
(`class_balance/ratio/1`, `reliability/pseudo_recall/1`) and flags a class that has just become shrinking
(`class_balance/newly_shrinking/<c>`). The trainer logs the keys under the dataset's class names and prints
the warning, which also goes into `train_log.jsonl` (`"warnings"`).
"""

from __future__ import annotations

import re
from typing import Sequence

PER_CLASS = re.compile(r"^(class_balance/[^/]+|reliability/pseudo_(?:recall|precision))/(\d+)$")
ADVICE = ("semi-supervision may be costing this class what supervised training reaches. Compare with "
          "method.name=supervised over seeds (prcl compare){remedy}; docs/class-balance.md")


def by_class_name(stats: dict[str, float], class_names: Sequence[str]) -> dict[str, float]:
    """`stats` with each per-class key's index replaced by the class's name."""
    out = {}
    for key, value in stats.items():
        match = PER_CLASS.match(key)
        out[f"{match[1]}/{class_names[int(match[2])]}" if match else key] = value
    return out


def shrinking_class_warnings(stats: dict[str, float], class_names: Sequence[str], iteration: int,
                             remedy: str = "") -> list[str]:
    """A warning for each class that turned shrinking this step (`class_balance/newly_shrinking/<c>`), naming
    `remedy` (`Method.shrinking_remedy`). The flag comes from the method's checkpointed state, so a resumed run
    warns where the uninterrupted run did."""
    advice = ADVICE.format(remedy=f", and try {remedy}" if remedy else "")
    messages = []
    for c, name in enumerate(class_names):
        if stats.get(f"class_balance/newly_shrinking/{c}"):
            predicted, labeled = stats[f"class_balance/mean_prediction/{c}"], stats[f"class_balance/labeled_share/{c}"]
            confident = stats[f"class_balance/confident_share/{c}"]
            messages.append(
                f"iteration {iteration}: class '{name}' is shrinking in the pseudo-labels: the labeler gives it "
                f"{100 * predicted:.2f}% of the unlabeled pixels' probability and {100 * confident:.2f}% of the "
                f"confident pseudo-labels, against {100 * labeled:.2f}% of the labeled pixels (ratio "
                f"{stats[f'class_balance/prediction_ratio/{c}']:.2f}); {advice}")
    return messages
