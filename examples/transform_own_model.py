"""Transform your own model, defined in your own file (here examples/my_model.py).

The same run from the command line::

    fxmeta transform examples/my_model.py:factory@my_weights.pt --data digits --out my_pruned.pt

This script does it from Python: build the model from its file spec, train it briefly
on the bundled digits data (stand-in for your trained weights), prune it to 2x fewer
FLOPs, finetune, save, and load the result back.

    python examples/transform_own_model.py [--out my_pruned.pt] [--speedup 2]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import fxmeta
from fxmeta.io import resolve_model, save
from fxmeta.pipeline.transform import TransformConfig, transform
from fxmeta.pruning.spec import PruneSpec
from fxmeta.tracing import example_from_shape
from fxmeta.training.data import load_data
from fxmeta.training.loop import TrainConfig, train

SPEC = f"{Path(__file__).with_name('my_model.py')}:factory"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="where to save the pruned model (default: a temporary folder)")
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs, then as many finetuning epochs")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = load_data("digits")  # 8x8 grayscale, 10 classes
    loaded = resolve_model(SPEC, num_classes=data.num_classes, in_channels=data.in_channels)
    print(f"built {type(loaded.module).__name__} from {loaded.spec}")
    base = train(loaded.module, data, TrainConfig(epochs=args.epochs, lr=0.1, batch_size=64, device="cpu",
                                                  progress=False)).model

    x = example_from_shape((1, *data.input_shape))
    config = TransformConfig(prune=PruneSpec(args.speedup), finetune=TrainConfig(epochs=args.epochs, lr=0.01,
                                                                        batch_size=64, device="cpu", progress=False))
    result = transform(base, x, config, data=data)
    m = result.metrics()
    print(f"FLOPs {m['before']['flops']:,} -> {m['after']['flops']:,} ({m['flops_speedup']:.2f}x fewer), "
          f"params {m['params_ratio']:.0%} kept, latency {m['latency_speedup']:.2f}x faster")
    print(f"test accuracy {m['before']['accuracy']:.4f} -> {m['removed_accuracy']:.4f} right after removal "
          f"-> {m['after']['accuracy']:.4f} after finetuning")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "my_pruned.pt"
    save(out, result.module, spec=loaded.spec, spec_kwargs=loaded.spec_kwargs, plan=result.plan,
         metrics=m, input_shape=tuple(x.shape))
    # The file names a Python file as its architecture: loading it imports that file, so
    # fxmeta asks for trust=True (like --trust on the command line).
    again = fxmeta.load(out, trust=True)
    with torch.no_grad():
        same = torch.equal(again(x), result.module.eval()(x))
    print(f"saved {out}; reloaded with fxmeta.load: {'same outputs' if same else 'OUTPUTS DIFFER'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
