"""Regenerate the tables of docs/results.md that come from files in docs/data/ (bench.py --json rows, train.py
logs), between the markers `<!-- tables.py begin -->` and `<!-- tables.py end -->`.

    python docs/tables.py          # print the tables
    python docs/tables.py --write  # put them into docs/results.md, and draw docs/gpt2_curves.png and
                                   # docs/gpt2_metrics.png (matplotlib; the second with metrics.py, from
                                   # the metrics.jsonl of two runs in docs/data/runs/)

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


SHAKESPEARE_MUON = {"m1": "--max_iters=1000 --lr_decay_iters=1000 --learning_rate=3e-3",
                    "m2": "--max_iters=750 --lr_decay_iters=750 --learning_rate=3e-3",
                    "m3": "--max_iters=500 --lr_decay_iters=500 --learning_rate=3e-3",
                    "m4": "--max_iters=1000 --lr_decay_iters=1000"}
SEEDS = {"": 1337, "_seed2": 1338}  # log name suffix -> --seed


def shakespeare_muon_table() -> str:
    classic = {s: stamped_evaluations(DATA / f"shakespeare_classic{s}.log") for s in SEEDS}
    best = {s: min(c, key=lambda e: e[2]) for s, c in classic.items()}
    lines = ["The classic recipe: `python train.py config/train_shakespeare_char.py --data_root=DIR --max_iters=2250 "
             "[--seed=1338]` (the offline text; its schedule still decays to 5000, and its best comes before 2250): "
             + "; ".join(f"seed {SEEDS[s]}, best val loss {v:.4f} at step {st}, {t:.1f} s from launch"
                         for s, (st, t, v) in best.items())
             + ". Its Muon variants add `--optimizer=muon --lr_schedule=wsd --warmup_iters=50` and:", "",
             "| variant | seed | best val loss | at step | seconds from launch to it | the classic recipe (same seed): "
             "seconds to that loss | reaches the classic best | ms/iter |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    reached = 0
    for path in sorted(DATA.glob("shakespeare_m*.log")):
        name, _, suffix = path.stem.removeprefix("shakespeare_").partition("_")
        suffix = f"_{suffix}" if suffix else ""
        s, t, v = min(stamped_evaluations(path), key=lambda e: e[2])
        _, classic_best_t, classic_best = best[suffix]
        classic_t = next((f"{ct:.1f}" for _, ct, cv in classic[suffix] if cv <= v), "never")
        ok = v <= classic_best
        reached += ok
        lines.append(f"| `{SHAKESPEARE_MUON[name]}` | {SEEDS[suffix]} | {v:.4f} | {s} | {t:.1f} | {classic_t} | "
                     + (f"yes, in {t / classic_best_t:.2f}x its time" if ok else "no") + f" | {median_ms(path):.1f} |")
    classic_ms = median_ms(DATA / "shakespeare_classic.log")
    lines += ["", f"The classic recipe's step: {classic_ms:.1f} ms/iter. Runs that reach the classic best of their "
              f"seed: {reached}."]
    return "\n".join(lines)


ABLATION = {"full": "config/train_gpt2_muon.py", "full_s2": "the same, --seed=1338",
            "no_qknorm": "without QK-norm (--qk_norm=False)", "gelu": "GELU MLP (--mlp=gelu)",
            "no_softcap": "no logit soft-cap (--logit_softcap=None)",
            "learned": "learned positions (--pos_emb=learned)",
            "layernorm": "LayerNorm (--norm=layernorm)", "tied": "tied head (--tie_embeddings=True)"}


def ablation_table() -> str:
    target = curve("baseline")[-1][2]
    lines = ["`python train.py config/train_gpt2_muon.py --dataset=files --max_iters=200 --eval_interval=5 "
             "--eval_iters=8 --log_interval=5 --batch_size=32 --gradient_accumulation_steps=16 "
             f"--always_save_checkpoint=False --target_val_loss={target:.4f} [FLAG]` (the baseline's 200-step loss "
             "above), one switch of the recipe turned off per run; four runs shared the GPU at a time, so only the "
             "steps count here.", "",
             "| run | val 15 | val 20 | val 25 | steps to the baseline's 200-step loss |", "|---|---:|---:|---:|---:|"]
    for name, what in ABLATION.items():
        points = stamped_evaluations(DATA / f"gpt2_ablation_{name}.log")
        val = {s: v for s, _, v in points}
        step = next(s for s, _, v in points if v <= target)
        lines.append(f"| {what} | {val[15]:.4f} | {val[20]:.4f} | {val[25]:.4f} | {step} |")
    return "\n".join(lines)


def recipe_speed_table() -> str:
    rows = {n: json.loads((DATA / f"recipe_speed_{n}.json").read_text())[0]
            for n in ("baseline", "recipe_adamw", "recipe_muon")}
    base = rows["baseline"]["tokens_per_s"]
    lines = ["`python bench.py --batch_size=32 --gradient_accumulation_steps=16 --compile=on --warmup=2 --iters=4 "
             "[FLAGS]` (524,288 tokens per step, random tokens), the recipe's blocks being `--norm=rmsnorm "
             "--pos_emb=rope --bias=False --tie_embeddings=False --mlp=relu2 --qk_norm=True --logit_softcap=15 "
             "--zero_init_proj=True`. Commit 0fa955a:", "", "| run | ms/iter | tokens/s | against the baseline |",
             "|---|---:|---:|---:|"]
    lines += [f"| {n} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.3f}x |"
              for n, r in rows.items()]
    printed = [line.split() for line in (DATA / "recipe_speed_0a53361.txt").read_text().splitlines()
               if not line.startswith("#")]
    bases = [float(r[2]) for r in printed if r[0].startswith("baseline")]
    base = sum(bases) / len(bases)
    lines += ["", "Commit 0a53361 (the step takes the loss without the logits), another call; each row the recipe "
              "with Muon and one change (the baseline: the mean of its two rounds):", "",
              "| run | ms/iter | tokens/s | peak memory (GiB) | against the baseline |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {float(r[1]):.1f} | {int(r[2]):,} | {float(r[3]):.2f} | {float(r[2]) / base:.3f}x |"
              for r in printed]
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


MICRO_RUNS = {"fixed_124m": "124M, batch_size 30", "auto_124m": "124M, micro_batch=auto",
              "auto_xl": "gpt2-xl (1.56B), micro_batch=auto",
              "cuda_graph": "Shakespeare (10.7M), batch 64 x 64, cuda_graph=True, micro_batch=auto"}


def micro_batch_table() -> str:
    """micro_batch=auto against the config's fixed micro-batch: what the probes chose, and the run's steps."""
    lines = ["| run | micro-batch x micro-steps | tokens per step | probes (peak GiB) against the budget | "
             "peak memory in training | ms/iter | tokens/s | loss at iter 1, 2 |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for name, what in MICRO_RUNS.items():
        text = (DATA / f"micro_batch_{name}.log").read_text()
        chose = re.search(r"micro-batches of (\d+) \((\d+) micro-steps.*Probed: (.*) against ([\d.]+) GiB", text)
        split = f"{chose[1]} x {chose[2]}" if chose else "30 x 16 (the config's)"
        probes = f"{chose[3]} against {chose[4]}" if chose else "none"
        iters = re.findall(r"iter (\d+): loss ([\d.]+), lr \S+, ([\d.]+) ms/iter, ([\d,]+) tok/s, mfu [\d.]+%, "
                           r"peak memory ([\d.]+) GiB", text)
        steady = [row for row in iters if row[0] != "1"]  # the first step compiles
        ms = sorted(float(row[2]) for row in steady)[len(steady) // 2]
        rate = sorted(int(row[3].replace(",", "")) for row in steady)[len(steady) // 2]
        tokens = re.search(r"([\d,]+) tokens per iteration", text)[1]
        lines.append(f"| {what} | {split} | {tokens} | {probes} | {iters[-1][4]} GiB | {ms:.1f} | {rate:,} | "
                     f"{iters[0][1]}, {iters[1][1]} |")
    return "\n".join(lines)


def hellaswag_table() -> str:
    """HellaSwag's time over the whole val file: the command, and inside the training runs of the metrics plot."""
    lines = ["| where | examples per pass | examples | acc | acc_norm | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for name, batch in (("hellaswag_124m", 16), ("hellaswag_124m_b64", 64)):
        acc, norm, n, seconds = re.search(r"acc ([\d.]+), acc_norm ([\d.]+) over ([\d,]+) examples \(([\d.]+) s\)",
                                          (DATA / f"{name}.log").read_text()).groups()
        lines.append(f"| `evaluate.py`, 124M after 4 steps | {batch} | {n} | {acc} | {norm} | {seconds} |")
    for run in ("gpt2-adamw", "gpt2-muon"):
        text = (DATA / "runs" / run / "train.log").read_text()
        stamps = [(float(t), line) for t, line in re.findall(r"^ *([\d.]+) (.*)$", text, re.M)]
        start = next(t for t, line in stamps if line.startswith("HellaSwag: ") or line.startswith("iter 100:"))
        end, acc, norm, n = next((t, *m.groups()) for t, line in stamps if (m := re.match(
            r"step 100: hellaswag acc ([\d.]+), acc_norm ([\d.]+) \(([\d,]+) examples\)", line)))
        lines.append(f"| training, {run} at step 100 (with the val loss) | 16 | {n} | {acc} | {norm} | "
                     f"{end - start:.1f} |")
    return "\n".join(lines)


def metrics_plot(path: Path) -> None:
    """The README's plot: metrics.py drawing the metrics.jsonl of the two runs in docs/data/runs/."""
    sys.path.insert(0, str(DOCS.parent))
    import metrics

    runs = ",".join(str(DATA / "runs" / run) for run in ("gpt2-adamw", "gpt2-muon"))
    metrics.plot(metrics.PlotConfig(runs=runs, x="iter,seconds", out=str(path),
                                    title="GPT-2 124M on site-packages .py, 262,144 tokens a step, one H200"))


def tables() -> str:
    return "\n\n".join(["### Speed: 63f2b55 (modules by idea) against 51427ac (before them)", speed_table(),
                        "### The Shakespeare recipe's losses: 63f2b55 against 51427ac", recipe_table(),
                        "### GPT-2 124M in 200 steps: AdamW against Muon", gpt2_table(),
                        "### What each switch of the recipe buys (124M)", ablation_table(),
                        "### The recipe's tokens/s against the baseline's (124M)", recipe_speed_table(),
                        "### GPT-2 medium (350M) in 100 steps: AdamW against Muon", medium_table(),
                        "### Shakespeare characters: the classic recipe against Muon variants",
                        shakespeare_muon_table(),
                        "### micro_batch=auto: the largest micro-batch that fits, the tokens per step kept",
                        micro_batch_table(),
                        "### HellaSwag over the whole val file (10,042 examples)", hellaswag_table()])


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
    metrics_plot(DOCS / "gpt2_metrics.png")


if __name__ == "__main__":
    main(sys.argv[1:])
