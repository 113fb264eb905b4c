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

from ..errors import DamagedFileError, FxmetaError, SpecError

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


def load_zoo(folder: str | os.PathLike, *, trust: bool = False) -> Zoo:
    """Read a zoo folder's manifest; FxmetaError when there is none, DamagedFileError when it is
    malformed, UnsafeFileError when it names code (a model factory, a data function) and not ``trust``."""
    from ..io.trust import check_data_spec, check_model_spec

    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FxmetaError(f"{folder} is not a model zoo (no {MANIFEST}); build one with fxmeta zoo / build_zoo()")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedFileError(f"damaged file: {path}: not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FxmetaError(f"{path} has format {got!r}, not {FORMAT!r}")
    zoo = _check_manifest(data, path, os.fspath(folder))
    check_model_spec(zoo.model_spec, trust=trust, source=str(path))
    check_data_spec(zoo.data, trust=trust, source=str(path))
    return zoo


def _check_manifest(data: dict, path: Path, folder: str) -> Zoo:
    problems = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("model_spec", "data"):
        need(isinstance(data.get(key), str) and bool(data.get(key)), f"{key} is not a non-empty string")
    need(isinstance(data.get("spec_kwargs"), dict), "spec_kwargs is not a dict")
    need(isinstance(data.get("settings"), dict), "settings is not a dict")
    shape = data.get("input_shape")
    need(isinstance(shape, list) and bool(shape) and all(is_int(d) and d > 0 for d in shape),
         "input_shape is not a list of positive integers")
    members = data.get("members")
    need(isinstance(members, list), "members is not a list")
    fields = {"index", "file", "seed", "split", "metrics"}
    for i, m in enumerate(members if isinstance(members, list) else []):
        if not isinstance(m, dict) or set(m) - fields or not {"index", "file", "seed", "split"} <= set(m):
            problems.append(f"members[{i}] is not a member record ({', '.join(sorted(fields))})")
            continue
        file = m["file"]
        need(is_int(m["index"]) and m["index"] >= 0 and is_int(m["seed"]), f"members[{i}] index / seed invalid")
        need(m["split"] in ("train", "val"), f"members[{i}].split is {m['split']!r}, not train or val")
        need(isinstance(file, str) and bool(file) and not os.path.isabs(file) and ".." not in Path(file).parts,
             f"members[{i}].file {file!r} is not a file name inside the zoo folder")
        need(isinstance(m.get("metrics", {}), dict), f"members[{i}].metrics is not a dict")
    if problems:
        raise DamagedFileError(f"damaged file: {path}: {'; '.join(problems[:3])}")
    rest = {k: v for k, v in data.items() if k not in ("format", "members")}
    unknown = set(rest) - {"model_spec", "data", "spec_kwargs", "input_shape", "settings"}
    if unknown:
        raise DamagedFileError(f"damaged file: {path}: unknown keys {sorted(unknown)}")
    return Zoo(folder=folder, members=[ZooMember(**m) for m in members], **rest)


def _write_manifest(zoo: Zoo) -> None:
    from ..io.saving import atomic_write_text

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
    from ..io.paths import Created, check_output

    folder = Path(check_output(out, kind="dir", what="zoo folder"))
    created = Created()
    created.folder(folder)
    try:
        splits = load_data(data, seed=0)  # one fixed split for every member: same held-out data
    except BaseException:
        created.remove()
        raise
    folder.mkdir(parents=True, exist_ok=True)
    spec_kwargs = {"num_classes": splits.num_classes, "in_channels": splits.in_channels}
    input_shape = [1, *splits.input_shape]
    settings = {"count": count, "prune_speedup": prune_speedup, "epochs": epochs,
                "finetune_epochs": finetune_epochs, "seed": seed, "val_count": val_count, "lr": lr,
                "batch_size": batch_size}
    zoo = Zoo(os.fspath(folder), model_spec, data, spec_kwargs, input_shape, settings)
    if (folder / MANIFEST).is_file():
        old = load_zoo(folder, trust=True)  # only compared with the settings given here, nothing of it runs
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
        try:
            member = _build_member(zoo, index, member_seed, split, splits, trust=trust, progress=progress)
        except BaseException:
            created.remove()  # the folder, when this build made it and nothing was finished in it
            raise
        zoo.members.append(member)
        zoo.members.sort(key=lambda m: m.index)
        _write_manifest(zoo)
    _write_manifest(zoo)
    return zoo


def _build_member(zoo: Zoo, index: int, member_seed: int, split: str, splits: Any, *, trust: bool,
                  progress: bool) -> ZooMember:
    from ..io.files import resolve_model
    from ..io.saving import save
    from ..pruning.pruner import prune
    from ..tracing import example_from_shape
    from ..training.loop import TrainConfig, train

    settings = zoo.settings
    started = time.perf_counter()
    torch.manual_seed(member_seed)  # the architecture's initialisation draws from the global RNG
    loaded = resolve_model(zoo.model_spec, trust=trust, **zoo.spec_kwargs)
    model = loaded.module
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
    # the architecture travels with the file (embedded when it is code): members load from anywhere
    save(Path(zoo.folder) / file, module.eval(), spec=zoo.model_spec, spec_kwargs=zoo.spec_kwargs, plan=plan,
         metrics=metrics, input_shape=zoo.input_shape, force=True, embedded=loaded.embedded)
    return ZooMember(index, file, member_seed, split, metrics)
