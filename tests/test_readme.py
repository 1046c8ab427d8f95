"""The README's two opening commands: the test command is exactly what CI runs, and the main job names files
that exist."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def readme_commands() -> list[str]:
    """The command lines of the README's first code block (comments dropped)."""
    block = (REPO_ROOT / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci.endswith("python -m pytest -q")
    assert readme_commands()[1] == ci


def test_main_job_names_scripts_and_configs_that_exist():
    main_job = readme_commands()[0]
    paths = re.findall(r"[\w/]+\.py", main_job)
    assert "train.py" in paths and "sample.py" in paths
    assert all((REPO_ROOT / p).is_file() for p in paths), paths
