"""The fuzzers at full size: random DAGs against an independent oracle, damaged copies of files.

    python -m benchmarks.fuzz [--dags 1000] [--corruptions 500] [--seed 0]

The DAG property (tests/fuzzing.py ``dag_case``): random conv / bn / add / cat / SE / split
graphs behind tied 1x1 convs and an ``index_select`` by a buffer, returning a tensor, a dict
or nested tuples; removable units beyond the strongest quarter are killed, the model is
pruned without the self-check, and every output leaf must equal the original's. The
corruption fuzz flips bits, zeroes ranges and truncates a valid ``pruned.pt`` and
``metanet.pt``: every copy must fail with an fxmeta error or load exactly the original.
Writes benchmarks/results/fuzz.md; failures must be 0.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "fuzz.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dags", type=int, default=1000)
    parser.add_argument("--corruptions", type=int, default=500, help="mutated copies per file kind")
    parser.add_argument("--inputs", type=int, default=500, help="damaged state dicts (and a fifth as many HF folders)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    torch.set_num_threads(1)
    from fuzzing import Tally, run_dags
    from test_fuzz import corruption, damaged_inputs

    from ._env import header

    started = time.perf_counter()
    tally = Tally()
    dag_failure = None
    try:
        run_dags(args.dags, seed=args.seed, tally=tally)
    except Exception:  # noqa: BLE001 - the table reports it
        dag_failure = traceback.format_exc(limit=3)
    dag_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        results = corruption(Path(folder), args.corruptions, seed=args.seed)
    corrupt_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        inputs = damaged_inputs(Path(folder), args.inputs, seed=args.seed)
    input_seconds = time.perf_counter() - started
    lines = ["# Fuzzing", "", header(f"python -m benchmarks.fuzz --dags {args.dags} --corruptions "
                                     f"{args.corruptions} --inputs {args.inputs} --seed {args.seed}", 1,
                                     f"hypothesis seed {args.seed}, corruption RNG seed {args.seed}"), "",
             "## Random DAGs against the independent oracle", "",
             "| examples | outcomes | failures | seconds |", "|---:|---|---:|---:|",
             f"| {tally.examples} | {', '.join(f'{k}: {v}' for k, v in sorted(tally.outcomes.items()))} | "
             f"{0 if dag_failure is None else 1} | {dag_seconds:.0f} |", ""]
    if dag_failure:
        lines += ["First failure (hypothesis shrinks it):", "", "```", dag_failure.strip(), "```", ""]
    lines += ["## Damaged files", "", "| file | mutated copies | clean fxmeta error | loaded unchanged | tracebacks "
              "| silent wrong loads |", "|---|---:|---:|---:|---:|---:|"]
    failures = 0 if dag_failure is None else 1
    failures += outcome_rows(results, lines)
    lines += ["", f"Corruption fuzz: {corrupt_seconds:.0f} s.", "",
              "## Damaged inputs", "",
              "What users give as weights, with one thing wrong: a state dict for `SPEC@weights.pt` (NaN / inf "
              "values, float16 / int64 / float64 tensors, a missing, extra or resized key, a value that is not a "
              "tensor, a list instead of a dict; and the valid DDP `module.` prefix, which must load), and a "
              "Hugging Face folder (no weights, bad JSON, unknown model_type or class, an architectures entry "
              "that is not a model class, weights of another shape, a pickled `pytorch_model.bin`, a truncated "
              "safetensors file, a config that is not a dict). Each must fail with a clean fxmeta error before "
              "any work, or load exactly what it holds.", "",
              "| input | cases | clean fxmeta error | loaded exactly | tracebacks | silent wrong loads |",
              "|---|---:|---:|---:|---:|---:|"]
    failures += outcome_rows(inputs, lines)
    lines += ["", f"Damaged inputs: {input_seconds:.0f} s. **Failures: {failures}** (must be 0).", ""]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if failures == 0 else 1


def outcome_rows(results: dict[str, list[str]], lines: list[str]) -> int:
    """One table row per kind of damaged file or input, the first failures listed under it; returns
    the number of failures (tracebacks and silent wrong loads)."""
    failures = 0
    for name, outcomes in results.items():
        crashes = [o for o in outcomes if o.startswith("crash")]
        silent = [o for o in outcomes if o.startswith("silent")]
        failures += len(crashes) + len(silent)
        lines.append(f"| {name} | {len(outcomes)} | {outcomes.count('error')} | {outcomes.count('same')} | "
                     f"{len(crashes)} | {len(silent)} |")
        lines += [f"- {o}" for o in (crashes + silent)[:5]]
    return failures


if __name__ == "__main__":
    sys.exit(main())
