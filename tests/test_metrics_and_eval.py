from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prcl import IGNORE_INDEX
from prcl.engine.evaluate import ShardSampler, center_crop, evaluate, sliding_window_logits
from prcl.engine.metrics import ConfusionMatrix


def brute_force_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> list[float]:
    ious = []
    for c in range(num_classes):
        keep = target != IGNORE_INDEX
        inter = np.sum((pred == c) & (target == c) & keep)
        union = np.sum(((pred == c) | (target == c)) & keep)
        ious.append(inter / union if union else math.nan)
    return ious


def test_miou_matches_brute_force_with_absent_classes():
    rng = np.random.default_rng(0)
    C = 6
    target = rng.integers(0, 4, size=(3, 20, 20))  # classes 4, 5 never in the ground truth
    target[:, :3] = IGNORE_INDEX
    pred = rng.integers(0, 5, size=(3, 20, 20))  # class 4 predicted (false positives only), 5 never
    cm = ConfusionMatrix(C)
    for p, t in zip(pred, target):  # accumulating image by image = all at once
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    expected = brute_force_iou(pred, target, C)
    got = cm.iou().tolist()
    assert math.isnan(got[5]) and math.isnan(expected[5])
    assert got[4] == 0.0 == expected[4]
    np.testing.assert_allclose(got[:5], expected[:5])
    assert cm.miou() == pytest.approx(np.nanmean(expected))
    assert cm.mat.sum() == np.sum(target != IGNORE_INDEX)


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ConfusionMatrix(3).update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 7, 2]))


class PixelModel(nn.Module):
    """A translation-equivariant 'model' (1×1 conv): sliding-window logits must equal whole-image ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, heads=True):
        return {"logits": self.conv(x)}


def test_sliding_window_equals_whole_image_for_pointwise_model():
    torch.manual_seed(0)
    model = PixelModel()
    x = torch.randn(2, 3, 37, 50)
    whole = model(x)["logits"]
    slid = sliding_window_logits(lambda t: model(t)["logits"], x, 4, crop=16, stride=10)
    torch.testing.assert_close(slid, whole)
    small = torch.randn(1, 3, 10, 12)  # smaller than the crop: padded, then cut back
    torch.testing.assert_close(sliding_window_logits(lambda t: model(t)["logits"], small, 4, 16, 10), model(small)["logits"])


def test_center_crop_pads_mask_with_ignore():
    img, mask = center_crop(torch.ones(3, 10, 20), torch.zeros(10, 20, dtype=torch.long), 16)
    assert img.shape == (3, 16, 16) and mask.shape == (16, 16)
    assert (mask[10:] == IGNORE_INDEX).all() and (mask[:10] == 0).all()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_unpadded_shards_cover_every_image_once(world):
    n = 10
    seen = sorted(i for r in range(world) for i in ShardSampler(n, r, world))
    assert seen == list(range(n))


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_handles_mixed_image_sizes_and_modes():
    torch.manual_seed(0)
    model = PixelModel()
    items = []
    for h, w in [(20, 20), (20, 20), (24, 30)]:
        img = torch.randn(3, h, w)
        items.append({"image": img, "mask": model(img[None])["logits"].argmax(1)[0]})
    for mode in ("whole", "sliding", "center_crop"):
        cm = evaluate(model, ListDataset(items), 4, device=torch.device("cpu"), mode=mode, crop=16, batch_size=2)
        assert cm.pixel_accuracy() == 1.0
    cm = evaluate(model, ListDataset(items), 4, device=torch.device("cpu"), mode="whole", batch_size=2)
    assert cm.mat.sum() == 20 * 20 * 2 + 24 * 30
