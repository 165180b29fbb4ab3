"""Do the anchors change if the student's probabilities are read at feature resolution (the PRCL
release) instead of from the image-size logits resized back down (`methods/contrastive_term.py` today)?

Trains a short PRCL run (the demo config unless overridden), then over the val images compares, at the
feature map (stride 4), the softmax of
  - `feature`:    the segmentation head's logits at feature resolution (what the release reads), and
  - `round_trip`: those logits bilinearly upsampled to the image and bilinearly downsampled again
                  (align_corners=False; what `ContrastiveTerm` reads),
on the valid labeled pixels (label ≠ 255, nearest-downsampled as the loss does). Anchors are the pixels
whose probability of their label is below δs. Reports the fraction of pixels whose anchor status
differs, and the mean and max |Δp| of the label's probability.

    python benchmarks/anchor_probabilities.py --iterations 40 --threads 1 data.root=data/synthetic
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.config import load_config
from prcl.engine.trainer import Trainer
from prcl.methods.contrastive_term import to_feature_resolution


@torch.no_grad()
def compare(model: torch.nn.Module, dataset, threshold: float) -> dict[str, float]:
    model.eval()
    differ = total = anchors_feature = anchors_round = 0
    gaps = []
    for i in range(len(dataset)):
        sample = dataset[i]
        image, mask = sample["image"][None], sample["mask"][None]
        out = model(image, heads=False)
        size = out["fused"].shape[-2:]
        feature_logits = model.seg_head(out["fused"]).float()  # [1, C, h, w]
        round_trip = F.interpolate(out["logits"].float(), size=size, mode="bilinear", align_corners=False)
        labels = to_feature_resolution(mask, size)  # [1, h, w]
        valid = labels != IGNORE_INDEX
        index = labels.clamp(0, feature_logits.shape[1] - 1)[:, None]
        p_feature = feature_logits.softmax(1).gather(1, index)[:, 0][valid]
        p_round = round_trip.softmax(1).gather(1, index)[:, 0][valid]
        a_feature, a_round = p_feature < threshold, p_round < threshold
        differ += int((a_feature != a_round).sum())
        anchors_feature += int(a_feature.sum())
        anchors_round += int(a_round.sum())
        total += int(valid.sum())
        gaps.append((p_feature - p_round).abs())
    gap = torch.cat(gaps)
    return {"pixels": total, "anchors_feature": anchors_feature / total, "anchors_round_trip": anchors_round / total,
            "anchor_status_differs": differ / total, "mean_abs_dp": float(gap.mean()), "max_abs_dp": float(gap.max())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("configs/demo.yaml", [f"output_dir={tmp}", "name=anchors", "train.device=cpu",
                                                f"train.iterations={args.iterations}", "train.eval_every=100000",
                                                "train.checkpoint_every=100000", "data.max_val_images=32",
                                                *args.overrides])
        trainer = Trainer(cfg)
        for it in range(args.iterations):
            trainer.train_step(it)
        trainer.lock.release()
        threshold = cfg.method.contrastive.strong_threshold
        for name, model in [("student", trainer.model), ("teacher", trainer.teacher.model)]:
            r = compare(model, trainer.val_dataset, threshold)
            print(f"{name} after {args.iterations} iterations, δs = {threshold}: " +
                  ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
