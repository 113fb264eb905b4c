"""Language models end to end: text data, the next-token loss and perplexity, a causal-LM transform."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fxmeta.errors import SpecError
from fxmeta.training.data import load_data
from fxmeta.training.loop import TrainConfig, evaluate, train
from fxmeta.training.text import BYTE_VOCAB, TokenBlocks, assign_splits

torch.set_num_threads(1)
STDLIB = Path(torch.__file__).parents[2]  # site-packages' parent: the standard library's sources
TEXT_FILES = ("abc.py", "bisect.py", "colorsys.py", "copy.py", "heapq.py", "keyword.py", "numbers.py", "operator.py",
              "queue.py", "random.py", "shlex.py", "string.py", "textwrap.py", "token.py", "glob.py", "fnmatch.py")


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory) -> Path:
    import shutil
    import sysconfig

    folder = tmp_path_factory.mktemp("text")
    lib = Path(sysconfig.get_paths()["stdlib"])
    for name in TEXT_FILES:
        shutil.copy(lib / name, folder / name)
    return folder


class TinyLM(nn.Module):
    """Embedding -> ReLU MLP -> vocabulary logits at every position."""

    def __init__(self, vocab: int = BYTE_VOCAB, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.fc = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.embed(ids))))


def test_perplexity_equals_a_hand_computation():
    torch.manual_seed(0)
    ids = torch.randint(0, BYTE_VOCAB, (5 * 9,))
    blocks = TokenBlocks(ids, 8, bytes_per_token=1.0, name="test")
    model = TinyLM().eval()
    scores = evaluate(model, DataLoader(blocks, batch_size=2))
    nll, count, hits = 0.0, 0, 0
    with torch.no_grad():
        for i in range(len(blocks)):
            x, y = blocks[i]
            logp = torch.log_softmax(model(x[None])[0].double(), -1)
            nll -= sum(float(logp[t, y[t]]) for t in range(len(y)))
            hits += int((logp.argmax(-1) == y).sum())
            count += len(y)
    assert scores["loss"] == pytest.approx(nll / count, rel=1e-6)
    assert scores["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    assert scores["bpb"] == pytest.approx(nll / count / math.log(2), rel=1e-6)  # bytes: one byte per token
    assert scores["acc"] == pytest.approx(hits / count)


def test_text_data_is_split_by_file_into_next_token_blocks(text_folder):
    data = load_data(f"text:{text_folder}", block_size=16)
    assert data.task == "causal-lm" and data.num_classes == BYTE_VOCAB and data.input_shape == (16,)
    files = [set(s.files) for s in data.sources]
    assert all(files) and not (files[0] & files[1]) and not (files[1] & files[2]) and not (files[0] & files[2])
    assert len(files[1]) == len(files[2]) == 2  # 10 % of 16 files, rounded
    x, y = data.train[3]
    assert x.shape == y.shape == (16,) and torch.equal(x[1:], y[:-1])
    # fixed: the same split again, and independent of the order the names come in
    again = load_data(f"text:{text_folder}", block_size=16)
    assert [s.files for s in again.sources] == [s.files for s in data.sources]
    names = [f"d/{i}.txt" for i in range(30)]
    assert assign_splits(names) == assign_splits(names[::-1])[::-1]
    # UTF-8 bytes of text per token: 1 exactly for bytes (the separators are extra tokens)
    assert 0.99 < data.test.bytes_per_token <= 1.0


def test_a_single_file_is_cut_into_three_contiguous_parts(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("".join(f"line {i} of the book\n" for i in range(400)))
    data = load_data(f"text:{path}", block_size=32)
    assert [len(s.files) for s in data.sources] == [1, 1, 1]
    assert sum(s.characters for s in data.sources) == len(path.read_text())


def test_text_data_errors_are_clear(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_data(f"text:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no text files"):
        load_data(f"text:{tmp_path / 'empty'}")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n")
    with pytest.raises(SpecError, match="is empty"):
        load_data(f"text:{blank}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(SpecError, match="a.txt is not UTF-8"):
        load_data(f"text:{bad}")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.txt", "b.txt"):
        (two / name).write_text("some text " * 50)
    with pytest.raises(SpecError, match="at least 3 text files"):
        load_data(f"text:{two}")
    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    with pytest.raises(SpecError, match="split has .* fewer than one block"):
        load_data(f"text:{short}", block_size=64)
    with pytest.raises(SpecError, match="too few for UTF-8 bytes"):
        load_data(f"text:{short}", block_size=4, vocab_size=128)
    with pytest.raises(SpecError, match="needs a file or folder"):
        load_data("text:")


def test_training_a_language_model_lowers_its_validation_perplexity(text_folder):
    data = load_data(f"text:{text_folder}", block_size=16)
    torch.manual_seed(0)
    model = TinyLM()
    before = evaluate(model, DataLoader(data.val, batch_size=64))["ppl"]
    result = train(model, data, TrainConfig(epochs=1, lr=3e-3, optimizer="adamw", batch_size=64, device="cpu",
                                            progress=False))
    assert result.test["ppl"] < before / 4
    assert result.history[0]["val_ppl"] == pytest.approx(math.exp(result.history[0]["val_loss"]))


def _tiny_llama(folder: Path) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=BYTE_VOCAB,
                                               max_position_embeddings=64))
    model.save_pretrained(folder)
    return folder


def test_a_causal_lm_transform_prunes_finetunes_and_saves_end_to_end(text_folder, tmp_path, capsys, monkeypatch):
    """``fxmeta transform hf:FOLDER --data text:... --out DIR/``: the report shows perplexity (the finetune
    recovers what the prune cost), the folder loads with ``from_pretrained`` as the model's own class with
    the logits fxmeta's own loader gives, and generate() is the same with and without its KV cache."""
    import re

    import transformers as tf
    from transformers import dynamic_module_utils

    import fxmeta
    from fxmeta.cli.app import main

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    llama = _tiny_llama(tmp_path / "llama")
    out = tmp_path / "pruned"
    code = main(["transform", f"hf:{llama}", "--data", f"text:{text_folder}", "--block-size", "16",
                 "--epochs", "1", "--batch-size", "32", "--lr", "3e-3", "--optimizer", "adamw", "--speedup", "1.5",
                 "--out", f"{out}{os.sep}"])
    assert code == 0
    report = capsys.readouterr().out
    assert "next-token accuracy" in report
    before, after = map(float, re.search(r"test perplexity\s*│\s*([\d.]+)\s*│\s*([\d.]+)", report).groups())
    removed = float(re.search(r"right after removal\s*│\s*│\s*([\d.]+)", report).group(1))
    assert after < removed and after < before  # the finetune recovers
    model = tf.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__mro__[1].__name__ == "LlamaForCausalLM" or type(model).__name__ == "LlamaForCausalLM"
    ours = fxmeta.load(f"hf:{out}").eval()
    prompt = torch.randint(0, BYTE_VOCAB, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, ours(prompt).logits, rtol=0, atol=0)
    with_cache = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    without = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)
    assert non_embedding(model) < non_embedding(tf.AutoModelForCausalLM.from_pretrained(llama))


def non_embedding(model) -> int:
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed)


def test_distillation_trains_the_pruned_network_towards_the_dense_one(text_folder):
    import fxmeta
    from fxmeta.pipeline.transform import TransformConfig, transform
    from fxmeta.pruning.spec import PruneSpec

    data = load_data(f"text:{text_folder}", block_size=16)
    torch.manual_seed(0)
    dense = TinyLM(width=32)
    train(dense, data, TrainConfig(epochs=1, lr=3e-3, optimizer="adamw", batch_size=64, device="cpu",
                                   progress=False))
    dense.zero_grad(set_to_none=True)
    x = data.train[0][0][None]
    finetune = TrainConfig(epochs=1, lr=1e-3, optimizer="adamw", batch_size=64, device="cpu", progress=False)
    config = TransformConfig(prune=PruneSpec(2.0, compensate="none", importance="l2"), finetune=finetune,
                             distill=True, distill_temperature=2.0)
    result = transform(dense, x, config, data=data)
    assert result.after.perplexity < result.removed_perplexity
    assert not any(p.grad is not None for p in dense.parameters())  # the teacher is a frozen copy
    with pytest.raises(SpecError, match="temperature"):
        TransformConfig(distill=True, distill_temperature=0.0)
    assert fxmeta.training.distill.DistillObjective(dense).teacher is not dense


def test_the_masked_network_of_a_captured_language_model_runs_any_batch(tmp_path):
    """A transformers model is captured by torch.export at the example's batch; the masked network
    (what prepare trains through) runs bigger batches in pieces, equal to the model itself with
    nothing removed and to the pruned model with a prune's units removed."""
    import transformers as tf

    import fxmeta
    from fxmeta.analysis.channels import analyze
    from fxmeta.pruning.calibration import logits_of
    from fxmeta.pruning.masking import MaskedNetwork, removal

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                               use_cache=False)).eval()
    x = torch.randint(0, 64, (1, 8))
    analysis = analyze(model, x)
    masked = MaskedNetwork(analysis)
    assert masked.fixed_batch == 1
    batch = torch.randint(0, 64, (3, 8))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(masked(batch)), model(batch).logits, rtol=1e-5, atol=1e-5)
        masked.set_removed(removal(analysis, 1.5))
        pruned = fxmeta.prune(model, x, speedup=1.5).module
        torch.testing.assert_close(logits_of(masked(batch)), pruned(batch).logits, rtol=1e-4, atol=1e-4)


def test_prune_and_curve_calibrate_on_text_and_report_perplexity(text_folder, tmp_path, capsys):
    import json

    from fxmeta.cli.app import main

    llama = _tiny_llama(tmp_path / "llama")
    out = tmp_path / "pruned.pt"
    assert main(["prune", f"hf:{llama}", "--data", f"text:{text_folder}", "--block-size", "16", "--batch-size", "16",
                 "--speedup", "1.5", "--out", str(out)]) == 0
    metrics = torch.load(out, weights_only=True)["metrics"]
    assert metrics["removed_perplexity"] > 0 and metrics["before"]["perplexity"] > 0
    saved = torch.load(out, weights_only=True)
    assert saved["plan"]["compensate"] == "lstsq"  # text given: the calibrated defaults
    curve = tmp_path / "curve.json"
    assert main(["curve", f"hf:{llama}", "--data", f"text:{text_folder}", "--block-size", "16", "--batch-size", "16",
                 "--speedups", "1.5,2", "--out", str(curve)]) == 0
    assert "perplexity right after pruning" in capsys.readouterr().out
    (points,) = json.loads(curve.read_text())
    assert points["unpruned_perplexity"] > 0 and all(p["perplexity"] > 0 for p in points["points"])
