"""hf: and timm: model specs, token inputs (--input-dtype long) and --example-input files, on the CLI."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import fxmeta
from fxmeta import cli
from fxmeta.io.files import resolve_model
from fxmeta.io.inputs import example_input, load_example_input
from fxmeta.io.trust import spec_runs_code

torch.set_num_threads(1)


def _llama_config(folder, **extra):
    import transformers as tf

    config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=100, architectures=["LlamaForCausalLM"], **extra)
    config.save_pretrained(folder)
    return folder / "config.json"


def test_token_ids_index_the_vocabulary_and_fall_back_to_zero_one():
    class Config:
        vocab_size = 7

    owner = nn.Module()
    owner.config = Config()
    ids = example_input((4, 64), torch.int64, owner)
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 7 and int(ids.max()) > 1
    assert set(example_input((4, 64), torch.int64).unique().tolist()) == {0, 1}
    assert torch.equal(ids, example_input((4, 64), torch.int64, owner))  # reproducible


def test_library_specs_read_from_a_file_need_no_trust():
    assert not spec_runs_code("hf:/some/config.json") and not spec_runs_code("timm:vit_tiny_patch16_224")


def test_prune_an_hf_config_with_long_inputs_and_load_the_file_again(tmp_path, capsys):
    pytest.importorskip("transformers", minversion="5")
    config = _llama_config(tmp_path / "llama")
    out = tmp_path / "pruned.pt"
    code = cli.main(["prune", f"hf:{config}", "--input-shape", "1,16", "--input-dtype", "long",
                     "--importance", "random", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = torch.load(out, weights_only=True)
    assert saved["input_dtype"] == "int64" and saved["plan"]["capture"] == "export"
    (config.parent / "config.json").unlink()  # the file holds its own config: it loads wherever it is copied
    module = fxmeta.load(out)  # no trust needed: a library spec and a JSON config
    assert module.get_parameter("model.embed_tokens.weight").shape[1] < 32
    assert module(torch.randint(0, 100, (1, 16))).logits.shape == (1, 16, 100)
    # the model's own class again: any batch and length, keyword inputs, generate
    assert type(module).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 100, (3, 9))
    assert module(ids, attention_mask=torch.ones_like(ids)).logits.shape == (3, 9, 100)
    assert module.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_hf_text_models_default_to_long_ids_and_export_capture(tmp_path):
    pytest.importorskip("transformers", minversion="5")
    loaded = resolve_model(f"hf:{_llama_config(tmp_path)}")
    assert loaded.default_input_dtype == torch.int64 and loaded.default_input_shape == (1, 128)
    assert loaded.capture == "export" and not loaded.module.config.use_cache


def test_an_hf_folder_brings_its_weights(tmp_path):
    tf = pytest.importorskip("transformers", minversion="5")
    torch.manual_seed(1)
    model = tf.BertModel(tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, vocab_size=50, architectures=["BertModel"]))
    model.save_pretrained(tmp_path)
    loaded = resolve_model(f"hf:{tmp_path}")
    assert type(loaded.module).__name__ == "BertModel"
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.module.state_dict().items())


def test_example_input_file_with_two_inputs_is_stored_to_replay_the_plan(tmp_path, capsys):
    (tmp_path / "two.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Two(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)\n\n"
        "    def forward(self, x, scale):\n        return self.b(torch.relu(self.a(x)) * scale)\n\n"
        "def make():\n    return Two()\n")
    torch.save((torch.randn(2, 6), torch.full((2, 1), 0.5)), tmp_path / "x.pt")
    out = tmp_path / "pruned.pt"
    code = cli.main(["prune", f"{tmp_path / 'two.py'}:make", "--example-input", str(tmp_path / "x.pt"),
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    module = fxmeta.load(out, trust=True)
    assert module.a.out_features == 8 and module(torch.randn(2, 6), torch.ones(2, 1)).shape == (2, 3)


def test_example_input_files_hold_tensors(tmp_path):
    torch.save([torch.zeros(1, 3)], tmp_path / "list.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "dict.pt")
    assert isinstance(load_example_input(str(tmp_path / "list.pt")), tuple)
    with pytest.raises(fxmeta.errors.SpecError, match="tuple of tensors"):
        load_example_input(str(tmp_path / "dict.pt"))


@pytest.mark.parametrize("case", ["no transformers", "no timm", "no config", "unknown class", "unknown timm",
                                  "bad dtype", "both inputs", "not a model class", "folder without weights"])
def test_spec_and_input_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    spec, extra = f"hf:{tmp_path}/missing.json", []
    if case == "no transformers":
        monkeypatch.setitem(sys.modules, "transformers", None)
        want = "pip install 'fxmeta[hf]'"
    elif case == "no timm":
        monkeypatch.setitem(sys.modules, "timm", None)
        spec, want = "timm:vit_tiny_patch16_224", "pip install 'fxmeta[timm]'"
    elif case == "no config":
        pytest.importorskip("transformers", minversion="5")
        want = "no such config file"
    elif case == "unknown class":
        pytest.importorskip("transformers", minversion="5")
        spec, want = f"hf:{_llama_config(tmp_path)}", "no class 'LlamaForMagic'"
        text = (tmp_path / "config.json").read_text().replace("LlamaForCausalLM", "LlamaForMagic")
        (tmp_path / "config.json").write_text(text)
    elif case == "not a model class":
        pytest.importorskip("transformers", minversion="5")
        spec, want = f"hf:{_llama_config(tmp_path)}", "'LlamaConfig' is not a transformers model class"
        text = (tmp_path / "config.json").read_text().replace("LlamaForCausalLM", "LlamaConfig")
        (tmp_path / "config.json").write_text(text)
    elif case == "folder without weights":
        pytest.importorskip("transformers", minversion="5")
        _llama_config(tmp_path)
        spec, want = f"hf:{tmp_path}", "is a folder without weights"
    elif case == "unknown timm":
        pytest.importorskip("timm")
        spec, want = "timm:no_such_net", "unknown timm model 'no_such_net'"
    elif case == "bad dtype":
        spec, extra, want = "fxmeta:resnet20", ["--input-dtype", "complex"], "unknown input dtype 'complex'"
    else:
        torch.save(torch.zeros(1, 3, 32, 32), tmp_path / "x.pt")
        spec, extra = "fxmeta:resnet20", ["--example-input", str(tmp_path / "x.pt"), "--input-shape", "1,3,32,32"]
        want = "drop --input-shape"
    code = cli.main(["prune", spec, *extra, "--out", str(tmp_path / "out.pt")])
    err = capsys.readouterr().err
    assert code == 2 and want in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.pt").exists()
