"""Regenerate the tables of docs/results.md that come from files in docs/data/ (bench.py --json rows, train.py
logs), between the markers `<!-- tables.py begin -->` and `<!-- tables.py end -->`.

    python docs/tables.py          # print the tables
    python docs/tables.py --write  # put them into docs/results.md, and draw docs/gpt2_curves.png (matplotlib)

The tables need plain Python only (json, re): they run anywhere, without torch.
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


GPT2_RUNS = {"baseline": "config/train_gpt2.py (AdamW, warmup 20, cosine to 200)",
             "muon_gpt2_blocks": "config/train_gpt2_muon.py with GPT-2's blocks (Muon and the schedule alone)",
             "muon": "config/train_gpt2_muon.py (Muon, modern blocks, warmup-stable-decay)"}


def stamped_evaluations(path: Path) -> list[tuple[int, float, float]]:
    """(step, seconds since launch, val loss) of each evaluation in a time-stamped train.py log."""
    return [(int(s), float(t), float(v)) for t, s, v in
            re.findall(r"^ *([\d.]+) step (\d+): train loss [\d.]+, val loss ([\d.]+)", path.read_text(), re.M)]


def median_after_start(values: list[str]) -> float:
    """The median of a log's figures after the first two lines (start-up)."""
    numbers = sorted(float(v.replace(",", "")) for v in values[2:])
    return numbers[len(numbers) // 2]


def median_rate(path: Path) -> float:
    return median_after_start(re.findall(r"ms/iter, ([\d,]+) tok/s", path.read_text()))


def median_ms(path: Path) -> float:
    return median_after_start(re.findall(r"([\d.]+) ms/iter", path.read_text()))


def curve(name: str) -> list[tuple[int, float, float]]:
    """(step, seconds since launch, val loss) of each evaluation in docs/data/gpt2_NAME.log."""
    return stamped_evaluations(DATA / f"gpt2_{name}.log")


def tokens_per_s(name: str) -> float:
    return median_rate(DATA / f"gpt2_{name}.log")


def gpt2_table() -> str:
    base = curve("baseline")
    target = base[-1][2]  # the baseline's val loss at its last step
    lines = [f"The baseline's val loss at step {base[-1][0]}: {target:.4f}; a run reaches it at its first evaluation "
             "at or below it (evaluations every 25 steps).", "",
             "| run | val 50 | val 100 | val 200 | steps to the baseline's 200-step loss | seconds from launch to it |"
             " tokens/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, what in GPT2_RUNS.items():
        points = curve(name)
        val = {s: v for s, _, v in points}
        step, seconds = next((s, t) for s, t, v in points if v <= target)
        lines.append(f"| {what} | {val[50]:.4f} | {val[100]:.4f} | {val[200]:.4f} | {step} | {seconds:.0f} "
                     f"({seconds / base[-1][1]:.2f}x) | {tokens_per_s(name):,.0f} |")
    opt = {n: json.loads((DATA / f"optimizer_{n}.json").read_text())[0] for n in ("adamw", "muon")}
    lines += ["", "The optimizer's own cost, on one model (GPT-2 124M's blocks), the same micro-batch and "
              "accumulation: `python bench.py --batch_size=32 --gradient_accumulation_steps=16 --compile=on "
              "--warmup=2 --iters=4 "
              "--optimizer=adamw|muon`: " + ", ".join(f"{n} {r['tokens_per_s']:,.0f} tokens/s" for n, r in opt.items())
              + f" ({opt['muon']['tokens_per_s'] / opt['adamw']['tokens_per_s']:.3f}x)."]
    return "\n".join(lines)


MEDIUM = ("`python train.py CONFIG --dataset=files --n_layer=24 --n_head=16 --n_embd=1024 --max_iters=100 "
          "--eval_interval=25 --eval_iters=16 --log_interval=10 --batch_size=16 --gradient_accumulation_steps=16 "
          "--always_save_checkpoint=False` (262,144 tokens per step), CONFIG = `config/train_gpt2.py "
          "--learning_rate=3e-4 --min_lr=3e-5 --warmup_iters=10 --lr_decay_iters=100` (GPT-3's rate for this size) or "
          "`config/train_gpt2_muon.py` unchanged.")


def medium_table() -> str:
    runs = {"baseline": "config/train_gpt2.py (AdamW, cosine)", "muon": "config/train_gpt2_muon.py"}
    curves = {n: stamped_evaluations(DATA / f"gpt2_medium_{n}.log") for n in runs}
    target_step, target_time, target = curves["baseline"][-1]
    lines = [MEDIUM, "", f"The baseline's val loss at step {target_step}: {target:.4f}.", "",
             "| run | val 25 | val 50 | val 75 | val 100 | first evaluation at or below the baseline's 100-step loss "
             "| seconds from launch to it | tokens/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, what in runs.items():
        val = {s: v for s, _, v in curves[name]}
        step, seconds = next((s, t) for s, t, v in curves[name] if v <= target)
        rate = median_rate(DATA / f"gpt2_medium_{name}.log")
        lines.append(f"| {what} | {val[25]:.4f} | {val[50]:.4f} | {val[75]:.4f} | {val[100]:.4f} | step {step} | "
                     f"{seconds:.0f} ({seconds / target_time:.2f}x) | {rate:,.0f} |")
    return "\n".join(lines)


SHAKESPEARE_MUON = {"s1": "--max_iters=750", "s2": "--max_iters=750 --learning_rate=3e-3",
                    "s3": "--max_iters=750 --muon_lr=0.03 --learning_rate=3e-3",
                    "s4": "--max_iters=500 --batch_size=128 --learning_rate=3e-3",
                    "s5": "--max_iters=750 --learning_rate=3e-3 --decay_fraction=0.6",
                    "s6": "--max_iters=1000 --learning_rate=3e-3"}


def shakespeare_muon_table() -> str:
    classic = stamped_evaluations(DATA / "shakespeare_classic.log")
    step, seconds, best = min(classic, key=lambda e: e[2])
    lines = ["`python train.py config/train_shakespeare_char.py --data_root=DIR` (the offline text), the classic "
             f"recipe: best val loss {best:.4f} at step {step}, {seconds:.1f} s from launch. Its Muon variants add "
             "`--optimizer=muon --lr_schedule=wsd --warmup_iters=50 --target_val_loss=BEST` and:", "",
             "| variant | best val loss | at step | seconds from launch to it | the classic recipe's seconds to "
             "that loss | ms/iter |", "|---|---:|---:|---:|---:|---:|"]
    for name, flags in SHAKESPEARE_MUON.items():
        path = DATA / f"shakespeare_{name}.log"
        s, t, v = min(stamped_evaluations(path), key=lambda e: e[2])
        classic_t = next(ct for _, ct, cv in classic if cv <= v)
        lines.append(f"| `{flags}` | {v:.4f} | {s} | {t:.1f} ({t / seconds:.2f}x) | {classic_t:.1f} | "
                     f"{median_ms(path):.1f} |")
    reached = [n for n in SHAKESPEARE_MUON if min(v for *_, v in stamped_evaluations(DATA / f"shakespeare_{n}.log"))
               <= best]
    classic_ms = median_ms(DATA / "shakespeare_classic.log")
    lines += ["", f"The classic recipe's step: {classic_ms:.1f} ms/iter. Variants that reach its best val "
              f"loss: {len(reached)} of {len(SHAKESPEARE_MUON)}."]
    return "\n".join(lines)


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name, what in GPT2_RUNS.items():
        steps, seconds, vals = zip(*curve(name), strict=True)
        by_step.plot(steps, vals, marker=".", label=what.split(" (")[0] if name != "muon_gpt2_blocks" else
                     "Muon, GPT-2 blocks")
        by_time.plot(seconds, vals, marker=".")
    by_step.set(xlabel="step (524,288 tokens each)", ylabel="val loss", title="GPT-2 124M, site-packages .py")
    by_time.set(xlabel="seconds from launch (one H200)", ylabel="val loss")
    by_step.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def tables() -> str:
    return "\n\n".join(["### Speed: 63f2b55 (modules by idea) against 51427ac (before them)", speed_table(),
                        "### The Shakespeare recipe's losses: 63f2b55 against 51427ac", recipe_table(),
                        "### GPT-2 124M in 200 steps: AdamW against Muon", gpt2_table(),
                        "### GPT-2 medium (350M) in 100 steps: AdamW against Muon", medium_table(),
                        "### Shakespeare characters: the classic recipe against Muon variants",
                        shakespeare_muon_table()])


def main(argv: list[str]) -> None:
    text = tables()
    if "--write" not in argv:
        print(text)
        return
    doc = RESULTS.read_text(encoding="utf-8")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    RESULTS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
    plot(DOCS / "gpt2_curves.png")


if __name__ == "__main__":
    main(sys.argv[1:])
