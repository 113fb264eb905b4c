"""timm ViT and ConvNeXt (random weights, small images): 2x fewer FLOPs, self-checked, with the
embedding width and the heads pruned as well as the MLP."""
from __future__ import annotations

import pytest
import torch

import fxmeta
from fxmeta import cli

timm = pytest.importorskip("timm")
torch.set_num_threads(1)

# What a user would pass: every group keeps at least half of its channels (so the prune
# spreads over hidden width, heads and MLP instead of draining the MLP), counts in multiples of 8.
SETTINGS = dict(speedup=2.0, importance="l2", min_keep=0.5, round_to=8)


def _make(name: str, size: int, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    return model, torch.randn(1, 3, size, size)


def _width(module, param: str, dim: int = 0) -> int:
    return module.get_parameter(param).shape[dim]


def test_vit_loses_embedding_width_heads_and_mlp():
    model, x = _make("vit_tiny_patch16_224", 64, img_size=64)
    result = fxmeta.prune(model, x, **SETTINGS)  # self-checked
    assert result.speedup >= 2.0
    pruned = result.module
    assert _width(pruned, "patch_embed.proj.weight") < 192  # the residual stream, cls token and pos_embed with it
    assert _width(pruned, "cls_token", 2) == _width(pruned, "patch_embed.proj.weight")
    heads = [_width(pruned, f"blocks.{i}.attn.qkv.weight") // (3 * 64) for i in range(12)]
    assert min(heads) < 3 and all(h >= 1 for h in heads)  # whole heads of 64 go, q, k and v together
    assert any(_width(pruned, f"blocks.{i}.mlp.fc1.weight") < 768 for i in range(12))
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_convnext_loses_stage_widths_and_mlp():
    model, x = _make("convnext_atto", 64)
    result = fxmeta.prune(model, x, **SETTINGS)
    assert result.speedup >= 2.0
    pruned = result.module
    stages = [_width(pruned, f"stages.{i}.blocks.0.conv_dw.weight") for i in range(4)]
    assert any(w < full for w, full in zip(stages, (40, 80, 160, 320)))
    assert all(_width(pruned, f"stages.{i}.blocks.0.mlp.fc1.weight") < 4 * full
               for i, full in enumerate((40, 80, 160, 320)))


def test_a_pruned_timm_file_loads_again(tmp_path, capsys):
    out = tmp_path / "convnext.pt"
    code = cli.main(["prune", "timm:convnext_atto", "--input-shape", "1,3,64,64", "--round-to", "8",
                     "--min-keep", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    module = fxmeta.load(out)  # a library spec: no trust needed
    with torch.no_grad():
        assert module(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    widths = [module.get_parameter(f"stages.{i}.blocks.0.mlp.fc1.weight").shape[0] for i in range(4)]
    assert all(w >= 2 * full for w, full in zip(widths, (40, 80, 160, 320)))  # --min-keep 0.5: half stays
    assert torch.load(out, weights_only=True)["spec"] == "timm:convnext_atto"
