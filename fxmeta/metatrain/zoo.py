"""Data models for meta-training: N networks of one family, trained, lightly pruned, finetuned.

``build_zoo`` writes ``member_XX.pt`` files (fxmeta model files, loadable with
``torch.load(weights_only=True)`` and ``fxmeta.io.load``) and a ``zoo.json`` manifest that
lists them with their seed, metrics and split: the last ``val_count`` members are held
out ("val") for picking the meta-training checkpoint, the others are "train". A build
can be interrupted and re-run: finished members are skipped.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FxmetaError, SpecError

MANIFEST = "zoo.json"
FORMAT = "fxmeta.zoo/1"


@dataclass
class ZooMember:
    index: int
    file: str  # relative to the zoo folder
    seed: int
    split: str  # "train" | "val"
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Zoo:
    """A zoo folder's manifest: how it was built and its finished members."""

    folder: str
    model_spec: str
    data: str
    spec_kwargs: dict[str, Any]
    input_shape: list[int]
    settings: dict[str, Any]
    members: list[ZooMember] = field(default_factory=list)

    def split(self, name: str) -> list[ZooMember]:
        return [m for m in self.members if m.split == name]

    def path(self, member: ZooMember) -> str:
        return os.path.join(self.folder, member.file)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("folder")
        return {"format": FORMAT, **data}


def load_zoo(folder: str | os.PathLike) -> Zoo:
    """Read a zoo folder's manifest; FxmetaError when there is none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FxmetaError(f"{folder} is not a model zoo (no {MANIFEST}); build one with fxmeta zoo / build_zoo()")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise FxmetaError(f"{path} has format {data.get('format')!r}, not {FORMAT!r}")
    members = [ZooMember(**m) for m in data.pop("members")]
    data.pop("format")
    return Zoo(folder=os.fspath(folder), members=members, **data)


def _write_manifest(zoo: Zoo) -> None:
    from ..io.files import atomic_write_text

    atomic_write_text(json.dumps(zoo.to_dict(), indent=1) + "\n", Path(zoo.folder) / MANIFEST, force=True)


def build_zoo(
    model_spec: str = "fxmeta:resnet20",
    data: str = "digits",
    count: int = 10,
    out: str | os.PathLike = "zoo/",
    prune_speedup: float = 1.3,
    epochs: int = 20,
    finetune_epochs: int = 10,
    seed: int = 0,
    val_count: int = 2,
    lr: float = 0.1,
    batch_size: int = 128,
    progress: bool = True,
    trust: bool = False,
) -> Zoo:
    """Train ``count`` networks with seeds ``seed, seed+1, ...``, pre-prune them to
    ``prune_speedup`` x FLOPs and finetune; save them under ``out``. Resumable."""
    from ..training.data import load_data

    if count < 1 or not 0 <= val_count < count:
        raise SpecError(f"need count >= 1 and 0 <= val_count < count, got count={count}, val_count={val_count}")
    if prune_speedup < 1.0:
        raise SpecError(f"prune_speedup must be >= 1 (1 means no pre-pruning), got {prune_speedup}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    splits = load_data(data, seed=0)  # one fixed split for every member: same held-out data
    spec_kwargs = {"num_classes": splits.num_classes, "in_channels": splits.in_channels}
    input_shape = [1, *splits.input_shape]
    settings = {"count": count, "prune_speedup": prune_speedup, "epochs": epochs,
                "finetune_epochs": finetune_epochs, "seed": seed, "val_count": val_count, "lr": lr,
                "batch_size": batch_size}
    zoo = Zoo(os.fspath(folder), model_spec, data, spec_kwargs, input_shape, settings)
    if (folder / MANIFEST).is_file():
        old = load_zoo(folder)
        if (old.model_spec, old.data, old.settings) != (model_spec, data, settings):
            raise FxmetaError(f"{folder} holds a zoo built with other settings ({old.model_spec}, {old.data}, "
                              f"{old.settings}); use another folder or the same settings to resume")
        zoo.members = [m for m in old.members if (folder / m.file).is_file()]
    done = {m.index for m in zoo.members}
    say = print if progress else (lambda *a, **k: None)
    for index in range(count):
        if index in done:
            say(f"member {index}: done, skipped")
            continue
        member_seed = seed + index
        split = "val" if index >= count - val_count else "train"
        say(f"member {index} ({split}, seed {member_seed}) ...")
        member = _build_member(zoo, index, member_seed, split, splits, trust=trust, progress=progress)
        zoo.members.append(member)
        zoo.members.sort(key=lambda m: m.index)
        _write_manifest(zoo)
    _write_manifest(zoo)
    return zoo


def _build_member(zoo: Zoo, index: int, member_seed: int, split: str, splits: Any, *, trust: bool,
                  progress: bool) -> ZooMember:
    from ..io.files import resolve_model, save
    from ..pruning.pruner import prune
    from ..tracing import example_from_shape
    from ..training.loop import TrainConfig, train

    settings = zoo.settings
    started = time.perf_counter()
    torch.manual_seed(member_seed)  # the architecture's initialisation draws from the global RNG
    model = resolve_model(zoo.model_spec, trust=trust, **zoo.spec_kwargs).module
    common = dict(batch_size=settings["batch_size"], seed=member_seed, progress=progress, device="cpu")
    trained = train(model, splits, TrainConfig(epochs=settings["epochs"], lr=settings["lr"], **common))
    metrics = {"trained_val_acc": trained.best_val_acc}
    example = example_from_shape(zoo.input_shape)
    module, plan = trained.model, None
    if settings["prune_speedup"] > 1.0:
        pruned = prune(trained.model.eval(), example, speedup=settings["prune_speedup"])
        module, plan = pruned.module, pruned.plan
        metrics["speedup"] = pruned.speedup
    if settings["finetune_epochs"] > 0:
        tuned = train(module, splits, TrainConfig(epochs=settings["finetune_epochs"], lr=settings["lr"] * 0.1,
                                                  **common))
        module = tuned.model
        metrics["val_acc"] = tuned.best_val_acc
        metrics["test_acc"] = tuned.test["acc"] if tuned.test else float("nan")
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    file = f"member_{index:02d}.pt"
    save(Path(zoo.folder) / file, module.eval(), spec=zoo.model_spec, spec_kwargs=zoo.spec_kwargs, plan=plan,
         metrics=metrics, input_shape=zoo.input_shape, force=True)
    return ZooMember(index, file, member_seed, split, metrics)
