from __future__ import annotations

import torch

from prcl import IGNORE_INDEX
from prcl.data.mixing import classmix_masks, cutmix_masks, mix_with_partner


def test_classmix_keeps_image_label_confidence_aligned():
    # Each image's pixel value encodes (image index, class): after mixing every pixel must still carry
    # its own label and confidence.
    g = torch.Generator().manual_seed(0)
    B, H, W = 4, 8, 8
    labels = torch.randint(0, 5, (B, H, W), generator=g)
    labels[0, 0, :] = IGNORE_INDEX
    images = (torch.arange(B).view(B, 1, 1, 1) * 10 + labels[:, None]).float().expand(B, 3, H, W).clone()
    conf = torch.arange(B).view(B, 1, 1).float().expand(B, H, W) / 10 + labels / 100
    masks = classmix_masks(labels, generator=g)
    img_m, lab_m, conf_m = mix_with_partner(masks, images, labels, conf)
    src = torch.where(masks, torch.arange(B).view(B, 1, 1), torch.arange(B).roll(1).view(B, 1, 1))
    assert torch.equal(img_m[:, 0], (src * 10 + lab_m).float())  # image from the same source as the label
    torch.testing.assert_close(conf_m, src / 10 + lab_m / 100)
    for b in range(B):  # the pasted pixels are exactly some classes of image b (half of them, rounded up)
        present = labels[b][labels[b] != IGNORE_INDEX].unique()
        chosen = labels[b][masks[b]].unique()
        assert set(chosen.tolist()) <= set(present.tolist())
        assert len(chosen) == (len(present) + 1) // 2
        assert torch.equal(masks[b], torch.isin(labels[b], chosen))


def test_cutmix_box_area_and_mixing():
    g = torch.Generator().manual_seed(0)
    masks = cutmix_masks(3, 16, 16, area=0.25, generator=g)
    assert masks.shape == (3, 16, 16) and (masks.flatten(1).sum(1) == 64).all()
    x = torch.arange(3).float().view(3, 1, 1).expand(3, 16, 16)
    (mixed,) = mix_with_partner(masks, x)
    assert torch.equal(mixed, torch.where(masks, x, x.roll(1, 0)))
