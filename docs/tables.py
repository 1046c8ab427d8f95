"""Regenerate the tables of docs/results.md that come from files in docs/data/ (bench.py --json rows, train.py
logs), between the markers `<!-- tables.py begin -->` and `<!-- tables.py end -->`.

    python docs/tables.py          # print the tables
    python docs/tables.py --write  # put them into docs/results.md

Plain Python (json, re): it runs anywhere, without torch.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
DATA = DOCS / "data"
RESULTS = DOCS / "results.md"
BEGIN, END = "<!-- tables.py begin -->", "<!-- tables.py end -->"
CODE = {"old": "51427ac", "new": "63f2b55"}  # the commits measured: before and after the reshaping into modules


def bench_rows(mode: str) -> list[tuple[str, int, dict]]:
    """(code, round, row) for every row of docs/data/{mode}_{old,new}_{round}.json."""
    rows = []
    for path in sorted(DATA.glob(f"{mode}_*_*.json"), key=lambda p: (p.stem.split("_")[1] != "old", p.stem)):
        code, round_ = path.stem.split("_")[1:]
        rows += [(code, int(round_), row) for row in json.loads(path.read_text())]
    return rows


def speed_table() -> str:
    train = bench_rows("train")
    sample = bench_rows("sample")
    r = train[0][2]
    lines = [f"{r['device']}, torch {r['torch']}, {r['dtype']}; rounds alternate the two codes in one call.",
             "", "Training, GPT-2 124M compiled, batch 12, 10 warm-up + 50 timed steps, random tokens: "
             "`python bench.py --batch_size=12 --compile=on --iters=50`", "",
             "| code | round | ms/iter | tokens/s |", "|---|---:|---:|---:|"]
    lines += [f"| {CODE[c]} | {n} | {row['ms_per_iter']:.1f} | {row['tokens_per_s']:,.0f} |" for c, n, row in train]
    lines += ["", "Decoding, batch 1, CUDA graphs (sample.py's default), random weights: "
              "`python bench.py --mode=sample --batch_size=1`", "",
              "| code | round | new tokens | tokens/s | ms/token |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {CODE[c]} | {n} | {row['new_tokens']} | {row['tokens_per_s']:,.0f} | {row['ms_per_token']:.2f} |"
              for c, n, row in sample]
    return "\n".join(lines)


def evaluations(path: Path) -> list[tuple[int, float]]:
    """(step, val loss) of each evaluation line of a train.py log."""
    return [(int(s), float(v)) for s, v in re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)",
                                                       path.read_text(), re.M)]


def losses(lines: list[str]) -> list[str]:
    """The losses of log lines, without their timings."""
    return [re.sub(r", lr .*", "", line) for line in lines]


def recipe_table() -> str:
    lines = ["`python train.py config/train_shakespeare_char.py --data_root=DIR` (the offline text), each code run "
             "twice: GPU kernels are not bitwise deterministic, so runs of one code differ too.", "",
             "| code | run | best val loss | at step | val loss at 5000 |", "|---|---:|---:|---:|---:|"]
    for code in ("old", "new"):
        for run, suffix in ((1, ""), (2, "_2")):
            evals = evaluations(DATA / f"shakespeare_char_{code}{suffix}.log")
            step, best = min(evals, key=lambda e: e[1])
            lines.append(f"| {CODE[code]} | {run} | {best:.4f} | {step} | {dict(evals)[5000]:.4f} |")
    cpu = {code: (DATA / f"shakespeare_char_cpu_{code}.log").read_text().splitlines() for code in ("old", "new")}
    same = "identical" if losses(cpu["old"]) == losses(cpu["new"]) else "DIFFERENT"
    lines += ["", "On the CPU in float32 (deterministic), `python train.py config/train_shakespeare_char.py "
              "--device=cpu --max_iters=20 --eval_interval=20 --eval_iters=4 --log_interval=5 --batch_size=16`: "
              f"the two codes' losses are {same}:", "", "```text", *cpu["new"], "```"]
    return "\n".join(lines)


def tables() -> str:
    return "\n\n".join(["### Speed: 63f2b55 (modules by idea) against 51427ac (before them)", speed_table(),
                        "### The Shakespeare recipe's losses: 63f2b55 against 51427ac", recipe_table()])


def main(argv: list[str]) -> None:
    text = tables()
    if "--write" not in argv:
        print(text)
        return
    doc = RESULTS.read_text(encoding="utf-8")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    RESULTS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
