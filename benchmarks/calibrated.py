"""Calibrated pruning on Fashion-MNIST: importance from data and weight compensation.

    python -m benchmarks.calibrated [--quick] [--stage bases|cells|report|all]

Base networks (ResNet20 and VGG11 in their CIFAR form, one input channel) are trained on
Fashion-MNIST's 54,000 training images (its fixed 6,000 validation images choose the
epoch), cached under ``~/.cache/fxmeta-bench/calibrated``. Every prune is measured right
after the prune + BatchNorm recalibration, with no training, on the validation split (where
every choice is made) and the official 10,000 test images (reported only). Images are
downsampled to 14x14 by default (``--image-size 28`` for the full resolution) to fit the
2-core budget; the report says which was used.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from .common import cache_dir, header, key

ARCHS = ("resnet20", "vgg11")
BASE_RECIPE = {"epochs": 8, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "schedule": "cosine"}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def load_splits(image_size: int):
    from fxmeta.training.data import load_data

    return load_data("fashion-mnist", image_size=None if image_size == 28 else image_size)


def base_network(arch: str, seed: int, image_size: int, data: Any) -> tuple[torch.nn.Module, dict]:
    """A trained base network (cached) and its record: recipe, val / test accuracy, seconds."""
    from fxmeta.models import get_model
    from fxmeta.training.data import make_loaders
    from fxmeta.training.loop import TrainConfig, evaluate, train

    folder = cache_dir("calibrated") / "bases"
    folder.mkdir(exist_ok=True)
    stem = folder / f"{arch}-s{seed}-{image_size}px-{key(BASE_RECIPE)}"
    model = get_model(arch, num_classes=10, in_channels=1)
    if Path(f"{stem}.json").is_file():
        model.load_state_dict(torch.load(f"{stem}.pt", weights_only=True))
        return model.eval(), json.loads(Path(f"{stem}.json").read_text())
    say(f"{arch} seed {seed}: training the base network ({BASE_RECIPE}) at {image_size}px")
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=10, in_channels=1)
    config = TrainConfig(epochs=BASE_RECIPE["epochs"], lr=BASE_RECIPE["lr"], batch_size=BASE_RECIPE["batch_size"],
                         weight_decay=BASE_RECIPE["weight_decay"], seed=seed, device="cpu", progress=False)
    t0 = time.perf_counter()
    result = train(model, data, config)
    torch.save(result.model.state_dict(), f"{stem}.pt")
    loaders = make_loaders(data, 512, seed=0)
    record = {"arch": arch, "seed": seed, "image_size": image_size, "recipe": BASE_RECIPE,
              "best_epoch": result.best_epoch, "val_acc": evaluate(result.model, loaders.val)["acc"],
              "test_acc": evaluate(result.model, loaders.test)["acc"], "seconds": time.perf_counter() - t0}
    Path(f"{stem}.json").write_text(json.dumps(record, indent=1))
    say(f"{arch} seed {seed}: val {record['val_acc']:.4f} test {record['test_acc']:.4f} in {record['seconds']:.0f} s")
    return result.model.eval(), record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("bases", "cells", "report", "all"))
    p.add_argument("--quick", action="store_true", help="one seed, ResNet20 only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--image-size", type=int, default=14, choices=(14, 28))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.archs = args.seeds[:1], ["resnet20"]
    data = load_splits(args.image_size)
    for arch in args.archs:
        for seed in args.seeds:
            base_network(arch, seed, args.image_size, data)
    if args.stage == "bases":
        return
    print(header("python -m benchmarks.calibrated", args.threads, ",".join(map(str, args.seeds))))


if __name__ == "__main__":
    main()
