"""Text for language models: ``--data text:PATH`` as fixed-length next-token blocks.

``PATH`` is a text file or a folder (searched recursively for files with a text suffix,
``TEXT_SUFFIXES``). The split is by file and fixed: the files, ordered by a hash of their path
relative to the folder, go 80 / 10 / 10 % to train / validation / test (at least one file each),
so the split does not depend on file names' order or on the machine; a single file is cut
into three contiguous parts instead. A split that would be empty is an error, never a silent
fallback.

Each file is tokenised on its own — by a tokenizer (anything with ``encode(text) -> ids``, such
as the ``transformers`` tokenizer saved in a model's folder) or, without one, as UTF-8 bytes
(ids 0-255) — the files of a split are concatenated with an end-of-text separator, and the
stream is cut into blocks of ``block_size + 1`` tokens: a sample is ``(block[:-1], block[1:])``,
so the next-token loss is the cross-entropy of every position against the following token.
``bytes_per_token`` (UTF-8 bytes of the split's text per token) turns nats per token into
bits per byte.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import SpecError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text", ".json", ".csv", ".html", ".tex", ".c", ".h")
SPLIT_PERCENT = (80, 10, 10)  # train / validation / test, by file
DEFAULT_BLOCK = 128
BYTE_VOCAB = 256


class TokenBlocks(Dataset):
    """``(ids[i : i + block], ids[i + 1 : i + block + 1])`` for consecutive, non-overlapping blocks."""

    def __init__(self, ids: torch.Tensor, block_size: int, bytes_per_token: float, name: str) -> None:
        self.blocks = len(ids) // (block_size + 1)
        self.ids = ids[: self.blocks * (block_size + 1)].view(self.blocks, block_size + 1)
        self.block_size = block_size
        self.bytes_per_token = bytes_per_token
        self.name = name

    def __len__(self) -> int:
        return self.blocks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.ids[index]
        return row[:-1], row[1:]


@dataclass
class TextSource:
    """What a split was read from (for the report and for checks)."""

    files: list[str]
    characters: int
    utf8_bytes: int
    tokens: int


def text_files(path: Path) -> list[Path]:
    """The text files ``path`` names: itself, or the text-suffixed files under it, sorted."""
    if not path.exists():
        raise SpecError(f"text data {path} does not exist; give a text file or a folder of text files")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise SpecError(f"text data {path} holds no text files (suffixes {', '.join(TEXT_SUFFIXES)})")
    return files


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"text data: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "convert it or leave it out of the folder") from None
    except OSError as exc:
        raise SpecError(f"text data: cannot read {path} ({exc.strerror or exc})") from None


def assign_splits(relatives: list[str]) -> list[int]:
    """0 (train), 1 (validation) or 2 (test) per file: ordered by a hash of the relative path, the
    last ``SPLIT_PERCENT`` shares (at least one file each) are test and validation."""
    n = len(relatives)
    if n < 3:
        raise SpecError(f"text data: a folder needs at least 3 text files (one per split), found {n}; "
                        "give a single file to have it cut into train / validation / test")
    n_test = max(1, round(n * SPLIT_PERCENT[2] / 100))
    n_val = max(1, round(n * SPLIT_PERCENT[1] / 100))
    order = sorted(range(n), key=lambda i: hashlib.sha256(relatives[i].encode()).hexdigest())
    out = [0] * n
    for rank, i in enumerate(order):
        out[i] = 2 if rank >= n - n_test else 1 if rank >= n - n_test - n_val else 0
    return out


def split_texts(path: Path) -> tuple[list[list[tuple[str, str]]], str]:
    """The (name, text) pieces of each split and how the split was made."""
    files = text_files(path)
    if len(files) == 1:
        text = read_text(files[0])
        if not text.strip():
            raise SpecError(f"text data: {files[0]} is empty")
        a = len(text) * SPLIT_PERCENT[0] // 100
        b = a + len(text) * SPLIT_PERCENT[1] // 100
        name = str(files[0])
        return [[(f"{name}[:{a}]", text[:a])], [(f"{name}[{a}:{b}]", text[a:b])], [(f"{name}[{b}:]", text[b:])]], \
            f"one file cut {'/'.join(map(str, SPLIT_PERCENT))} % into contiguous parts"
    texts = [(file, read_text(file)) for file in files]
    texts = [(file, text) for file, text in texts if text.strip()]
    splits: list[list[tuple[str, str]]] = [[], [], []]
    for (file, text), split in zip(texts, assign_splits([f.relative_to(path).as_posix() for f, _ in texts])):
        splits[split].append((str(file), text))
    return splits, f"{len(texts)} files split {'/'.join(map(str, SPLIT_PERCENT))} % by a hash of their path"


def encoder_for(tokenizer: Any) -> tuple[Any, int | None, int]:
    """(encode(text) -> list of ids, the separator id or None, the vocabulary size)."""
    if tokenizer is None:
        return (lambda text: list(text.encode("utf-8"))), 0, BYTE_VOCAB  # NUL separates files
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        raise SpecError(f"a tokenizer needs encode(text); got {type(tokenizer).__name__}")
    eos = getattr(tokenizer, "eos_token_id", None)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "vocab_size", 0)

    def run(text: str) -> list[int]:
        try:
            return list(encode(text, add_special_tokens=False))
        except TypeError:
            return list(encode(text))

    return run, eos, int(size)


@dataclass
class TextSplits:
    """Next-token blocks of the three splits, the vocabulary size and what they were read from."""

    train: TokenBlocks
    val: TokenBlocks
    test: TokenBlocks
    vocab: int
    description: str
    sources: list[TextSource]


def load_text(spec_path: str, *, tokenizer: Any = None, block_size: int = DEFAULT_BLOCK,
              vocab_size: int | None = None) -> TextSplits:
    """Next-token blocks from the text at ``spec_path`` (see the module doc)."""
    if block_size < 2:
        raise SpecError(f"the block size must be >= 2 tokens, got {block_size}")
    path = Path(spec_path).expanduser()
    pieces, how = split_texts(path)
    encode, separator, vocab = encoder_for(tokenizer)
    if vocab_size is not None and vocab > vocab_size:
        what = "UTF-8 bytes (256 ids)" if tokenizer is None else f"the tokenizer's {vocab} ids"
        raise SpecError(f"the model's vocabulary has {vocab_size} entries, too few for {what}; "
                        + ("put the model's tokenizer files in its folder" if tokenizer is None
                           else "use the model's own tokenizer"))
    datasets, sources = [], []
    for index, split in enumerate(pieces):
        ids: list[int] = []
        utf8 = chars = 0
        for _, text in split:
            ids.extend(encode(text))
            if separator is not None:
                ids.append(separator)
            utf8 += len(text.encode("utf-8"))
            chars += len(text)
        name = ("train", "validation", "test")[index]
        blocks = TokenBlocks(torch.tensor(ids, dtype=torch.long), block_size, utf8 / max(len(ids), 1), name)
        if len(blocks) == 0:
            raise SpecError(f"text data {path}: the {name} split has {len(ids)} tokens, fewer than one block of "
                            f"{block_size + 1} ({how}); give more text or a smaller --block-size")
        datasets.append(blocks)
        sources.append(TextSource([n for n, _ in split], chars, utf8, len(ids)))
    train, val, test = datasets
    tokens = "bytes" if tokenizer is None else type(tokenizer).__name__
    description = (f"text {path} ({how}; {tokens}, blocks of {block_size}): "
                   f"{len(train)}/{len(val)}/{len(test)} blocks train/val/test")
    return TextSplits(train, val, test, vocab_size or vocab, description, sources)


def folder_tokenizer(folder: str | Path | None) -> Any:
    """The transformers tokenizer saved in a model's folder, or None when it holds none."""
    if folder is None:
        return None
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
    if not any((folder / n).is_file() for n in names):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken tokenizer folder: say which and why
        raise SpecError(f"cannot load the tokenizer in {folder} ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
