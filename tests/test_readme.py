"""The README's commands: the test command is exactly what CI runs, and the quick start names files that exist; and
docs/results.md holds the tables docs/tables.py makes."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO_ROOT


def bash_block(heading: str) -> list[str]:
    """The command lines (comments and blank lines dropped) of the first ```bash block after the heading line."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split(f"\n{heading}\n", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci.endswith("python -m pytest -q")
    assert bash_block("## Tests") == [ci]


def test_the_quick_start_names_scripts_and_configs_that_exist():
    commands = bash_block("## Quick start")
    paths = [path for line in commands for path in re.findall(r"[\w/]+\.py", line)]
    assert {"data/shakespeare_char/prepare.py", "train.py", "sample.py"} <= set(paths)
    assert all((REPO_ROOT / p).is_file() for p in paths), paths


def test_the_quick_start_samples_from_where_it_trains():
    # train.py's config sets out_dir; sample.py must read that folder
    commands = bash_block("## Quick start")
    (train_line,) = [line for line in commands if line.startswith("python train.py")]
    (sample_line,) = [line for line in commands if line.startswith("python sample.py")]
    config = REPO_ROOT / train_line.split()[2]
    out_dir = re.search(r"^out_dir = ['\"](.+?)['\"]", config.read_text(encoding="utf-8"), re.MULTILINE)
    assert out_dir and f"--out_dir={out_dir[1]}" in sample_line.split()


def test_the_results_tables_are_what_docs_tables_makes_of_docs_data():
    spec = importlib.util.spec_from_file_location("docs_tables", REPO_ROOT / "docs" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    results = (REPO_ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert f"{tables.BEGIN}\n{tables.tables()}\n{tables.END}" in results
    assert "| 51427ac | 1 |" in results and "identical" in results  # the rows and the CPU comparison made it in
