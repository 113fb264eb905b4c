"""Hugging Face folders out (fxmeta.io.hf_folder): a pruned transformers model saved as a save_pretrained
folder loads with from_pretrained, gives the pruned model's logits, and generates the same tokens with and
without its KV cache; per-layer widths through the folder's modeling_fxmeta.py (trust_remote_code=True),
--uniform widths through the config's own fields (plain from_pretrained)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from hf_models import WIDTHS, make

import fxmeta
from fxmeta import cli
from fxmeta.errors import FxmetaError
from fxmeta.io import hf_folder

tf = pytest.importorskip("transformers", minversion="5")
torch.set_num_threads(1)

AUTO = {"llama": "AutoModelForCausalLM", "qwen2": "AutoModelForCausalLM", "gpt2": "AutoModelForCausalLM",
        "bert": "AutoModelForSequenceClassification"}


@pytest.fixture(autouse=True)
def _quiet_and_local_modules(tmp_path_factory, monkeypatch):
    """Remote code is copied to a temp modules cache, not the user's; transformers' load reports stay quiet."""
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path_factory.getbasetemp() / "modules"))
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()
    yield
    tf.logging.set_verbosity(verbosity)


def _prune(name: str, uniform: bool):
    model, x = make(name)
    # random importance spreads the removal over hidden width, heads and MLP (l2 on random weights drains the MLP)
    extra = {"allocation": "uniform-tied", "ignore": hf_folder.uniform_ignore(model, x)} if uniform else {}
    return model, fxmeta.prune(model, x, speedup=1.5, importance="random", **extra).module


def _inputs(name: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("uniform", [False, True], ids=["per-layer", "uniform"])
@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "bert"])
def test_a_pruned_model_round_trips_through_a_folder(name, uniform, tmp_path):
    model, pruned = _prune(name, uniform)
    param, dim = WIDTHS[name]["mlp"]
    assert pruned.get_parameter(param).shape[dim] < model.get_parameter(param).shape[dim]
    out = tmp_path / "out"
    written = hf_folder.save_hf_folder(pruned, out, uniform=uniform)
    assert written.remote_code is not uniform and written.auto_classes[0] == AUTO[name]
    config = json.loads((out / "config.json").read_text())
    assert ("fxmeta_shapes" in config) is not uniform and (out / "modeling_fxmeta.py").exists() is not uniform
    assert config["use_cache"] is True or name == "bert"  # generate() uses the cache again
    loaded = getattr(tf, AUTO[name]).from_pretrained(out, trust_remote_code=not uniform).eval()
    assert type(loaded).__name__ == ("" if uniform else "Fxmeta") + type(model).__name__
    own = fxmeta.io.resolve_model(f"hf:{out}").module  # fxmeta's own loader: the same widths, no remote code
    inputs = _inputs(name)
    with torch.no_grad():
        want = pruned(**inputs).logits
        for other in (loaded, own):
            torch.testing.assert_close(other(**inputs).logits, want, atol=1e-5, rtol=1e-4)
    if uniform:  # one width per layer kind, set in the config's own fields
        widths = {pruned.get_parameter(param.replace(".0.", f".{i}.")).shape[dim] for i in (0, 1)}
        assert len(widths) == 1
    if name == "bert":
        return
    prompt = inputs["input_ids"][:1, :4]
    with_cache = loaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    without = loaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    in_memory = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert with_cache.shape == (1, 12) and torch.equal(with_cache, without) and torch.equal(with_cache, in_memory)


def test_per_layer_widths_never_load_wrong_without_their_code(tmp_path):
    _, pruned = _prune("llama", uniform=False)
    hf_folder.save_hf_folder(pruned, tmp_path / "out")
    with pytest.raises(RuntimeError, match="mismatch"):  # the plain class refuses the shapes: no silent reinit
        tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with pytest.raises(FxmetaError, match="differ per layer"):
        hf_folder.save_hf_folder(pruned, tmp_path / "uniform", uniform=True)
    assert not (tmp_path / "uniform").exists()


def test_a_per_layer_folder_is_pruned_again_and_saved_like_any_hf_model(tmp_path, capsys):
    _, pruned = _prune("qwen2", uniform=False)
    hf_folder.save_hf_folder(pruned, tmp_path / "out")
    code = cli.main(["prune", f"hf:{tmp_path / 'out'}", "--speedup", "1.2", "--input-shape", "1,16",
                     "--out", str(tmp_path / "again.pt")])
    assert code == 0, capsys.readouterr().err
    again = fxmeta.load(tmp_path / "again.pt")  # rebuilt from the config the file holds, per-layer widths too
    assert type(again).__name__ == "FxmetaQwen2ForCausalLM"
    assert again(torch.randint(0, 128, (2, 5))).logits.shape == (2, 5, 128)


def test_uniform_keeps_whole_what_the_config_cannot_express():
    """GPT-2's head size is n_embd / n_head: its hidden width and heads stay (c_attn holds both), the MLP goes."""
    model, x = make("gpt2")
    assert hf_folder.uniform_ignore(model, x) == ("transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn")
    model, x = make("qwen2")  # its model reads a head_dim the config writes out: every width may change
    assert hf_folder.uniform_ignore(model, x) == ()


def test_a_folder_that_loads_wrong_is_never_left_behind(tmp_path, monkeypatch):
    _, pruned = _prune("gpt2", uniform=False)
    real = hf_folder.module_source
    monkeypatch.setattr(hf_folder, "module_source", lambda cls: real(cls).replace(
        "resize(self, getattr(config", "(lambda *a: None)(self, getattr(config"))  # a resize that does nothing
    with pytest.raises(FxmetaError, match="does not load"):
        hf_folder.save_hf_folder(pruned, tmp_path / "a" / "out")
    assert os.listdir(tmp_path) == []  # neither the folder, nor its temp folder, nor the parent it made


def _hf_source(folder) -> str:
    model, _ = make("llama")
    model.config.max_position_embeddings = 16  # the CLI's example: 16 tokens
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")  # copied as it is
    return f"hf:{folder}"


@pytest.mark.parametrize("uniform", [False, True], ids=["per-layer", "uniform"])
def test_prune_an_hf_folder_into_a_folder_on_the_cli(uniform, tmp_path, capsys):
    spec, out = _hf_source(tmp_path / "llama"), tmp_path / "pruned"
    code = cli.main(["prune", spec, "--speedup", "1.5", "--importance", "random", "--out", f"{out}{os.sep}",
                     *(["--uniform"] if uniform else [])])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert ("trust_remote_code=True" in captured.out) is not uniform
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(os.listdir(out))
    model = tf.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=not uniform)
    assert model.get_parameter(WIDTHS["llama"]["mlp"][0]).shape[0] < 128
    prompt = torch.randint(0, 128, (1, 4))
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True),
                       model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False))


def test_folder_outputs_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["prune", "fxmeta:resnet20", "--out", f"{out}{os.sep}"]) == 2
    assert "not a transformers model" in capsys.readouterr().err and not out.exists()
    spec = _hf_source(tmp_path / "llama")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["prune", spec, "--out", str(out)]) == 2
    assert "holds files; pass --force" in capsys.readouterr().err and os.listdir(out) == ["keep.txt"]
    assert cli.main(["prune", spec, "--force", "--out", str(tmp_path / "llama")]) == 2  # the input, even with --force
    assert "is also an input" in capsys.readouterr().err
    assert cli.main(["prune", spec, "--uniform", "--allocation", "global", "--out", str(tmp_path / "u")]) == 2
    assert "drop --allocation" in capsys.readouterr().err
