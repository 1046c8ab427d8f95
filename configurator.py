"""Settings for every script: a typed dataclass filled from config files and --key=value flags.

    python train.py config/train_gpt2.py --batch_size=32 --compile=False

Arguments are applied in order, later ones winning. A config file is plain Python (nanoGPT's config files
work as they are): it is run in its own namespace and every public name it leaves behind is a setting.
Values are coerced to the field's type, unknown names are refused with the nearest valid one, and
`--help` lists every setting with its default. User mistakes raise UserError, which process.run (every script's
entry point) prints as one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import math
import os
import re
import runpy
import tokenize
import traceback
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input or files: printed as one line, exit status 2, no traceback.

    Under torchrun only rank 0 says it: the other processes raise it with no message and print nothing. together:
    every process raises it at the same point (parallel.refuse_together, rank_0_decides), and they leave
    together (process.leave)."""

    def __init__(self, message: str = "", together: bool = False) -> None:
        super().__init__(message)
        self.together = together


def require(package: str, purpose: str, install: str = "-r requirements-extra.txt") -> types.ModuleType:
    """Import an optional package (a top-level name; by default one of requirements-extra.txt), or raise a
    UserError saying what needs it and how to get it (pip install `install`)."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name != package:
            raise  # the package is there, something it imports is not: not the user's doing
        raise UserError(f"{purpose} needs the {package} package: pip install {install}") from None


def _nearest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)  # no far-fetched guess
    return f" (did you mean '{close[0]}'?)" if close else ""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Optional[X] / X | None -> (X, True); anything else -> (tp, False)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def int_or_float(text: str, base: type) -> int | float:
    if base is int:
        try:
            return int(text)
        except ValueError:
            pass
    return float(text)


def type_name(tp: Any) -> str:
    """A setting's type as its help and its errors write it: int, float | None, int | str."""
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a flag string or a config-file value to the field type `tp`, or raise UserError."""
    base, optional = _strip_optional(tp)
    if value is None or value == "None":
        if optional:
            return None
        raise UserError(f"setting '{name}' cannot be None (expected {type_name(base)})")
    if isinstance(value, str) and base in (bool, int, float):  # a flag's text: parse it
        text = value.strip().lower()
        try:  # an int may be written 5000, 5e3 or 5000.0; as int() reads it where it can, every digit kept
            value = {"true": True, "false": False}[text] if base is bool else int_or_float(text, base)
        except (KeyError, ValueError):
            raise UserError(f"setting '{name}' expects {base.__name__}, got '{value}'") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"setting '{name}' must be a finite number, got {value}")
    if base is str and isinstance(value, str):
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        return value[1:-1] if quoted else value  # --start='"hi"' and --start=hi mean the same
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base is Any or (isinstance(value, base) and not (base is int and isinstance(value, bool))):
        return value
    raise UserError(f"setting '{name}' expects {type_name(base)}, got {value!r}")


def run_config_file(path: str) -> dict[str, Any]:
    """The names a config file leaves behind. A missing file, or one that raises, is a UserError naming the file
    (and the line that raised)."""
    if not os.path.isfile(path):
        key, eq, value = path.partition("=")
        hint = f" (did you mean --{key}={value}?)" if eq and key.isidentifier() else ""
        raise UserError(f"config file not found: {path}{hint}")
    try:
        return runpy.run_path(path, run_name="__config__")
    except SyntaxError as e:
        raise UserError(f"{path}, line {e.lineno}: SyntaxError: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 (a config file is the user's code: any error it raises is theirs)
        target = os.path.abspath(path)
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == target]
        where = f"{path}, line {lines[-1]}" if lines else path
        raise UserError(f"{where}: {type(e).__name__}: {e}") from None


def descriptions(cls: type) -> dict[str, str]:
    """Each field's description: the comment at the end of its line in the source of the class (or of the
    dataclass it inherits the field from), with the comment-only lines right below it, which continue it. A
    section's heading comment stands after a blank line."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out |= own_descriptions(klass)
    return out


def own_descriptions(cls: type) -> dict[str, str]:
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):  # no source at hand (an interactive session)
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(iter(lines).__next__) if tok.type == tokenize.COMMENT}
    fields = {i + 1: m[1] for i, line in enumerate(lines) if (m := re.match(r"\s+(\w+)\s*:", line))}
    out = {}
    for n, name in fields.items():
        if n not in comments:
            continue
        text = [comments[n]]
        below = n + 1
        while below <= len(lines) and lines[below - 1].strip().startswith("#"):
            text.append(comments[below])
            below += 1
        out[name] = " ".join(text)
    return out


def help_text(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    about = descriptions(cls)
    lines = [inspect.cleandoc(cls.__doc__ or cls.__name__), "", "settings (--key=value; defaults shown):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = hints[f.name]
        tname = type_name(tp)
        lines.append(f"  --{f.name}={default!r}  ({tname})" + (f"  {about[f.name]}" if f.name in about else ""))
    return "\n".join(lines)


def load(cls: type[T], argv: list[str]) -> T:
    """Build `cls` (a dataclass) from config files and --key=value flags, in the order given."""
    return cls(**settings_from_args(cls, argv))


def settings_from_dict(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """values (names of cls's fields) coerced to their field types, as a config file's are; a value that does not
    fit is a UserError naming where it came from."""
    hints = typing.get_type_hints(cls)
    coerced = {}
    for key, value in values.items():
        try:
            coerced[key] = coerce(key, value, hints[key])
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    return coerced


def settings_from_args(cls: type, argv: list[str]) -> dict[str, Any]:
    """The settings of `cls` (a dataclass) that config files and --key=value flags give, coerced to their field
    types, later arguments winning; settings not given are left out."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}

    def put(key: str, value: Any, where: str) -> None:
        if key not in hints:
            raise UserError(f"unknown setting '{key}' in {where}{_nearest(key, names)}")
        values[key] = coerce(key, value, hints[key])

    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(cls))
            raise SystemExit(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise UserError(f"flag '{arg}' needs a value: --{key}=VALUE")
            put(key, text, "flags")
        elif arg.startswith("-"):
            raise UserError(f"flags take the form --key=value, got '{arg}'")
        else:
            for key, value in run_config_file(arg).items():
                if key.startswith("_") or isinstance(value, types.ModuleType) or callable(value):
                    continue  # imports and helpers in a config file are not settings
                put(key, value, arg)
    return values
