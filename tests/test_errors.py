"""The exit codes: README's table is the contract users script against, and the code keeps it."""

from __future__ import annotations

import re
from pathlib import Path

import hermes_model.errors as errors
from hermes_model.errors import EXIT_CODES, HermesError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> dict[int, str]:
    """The rows of the table under README's "### Exit codes" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_readme_exit_code_table_is_the_code_s() -> None:
    table = _readme_table()
    assert table == EXIT_CODES


def test_every_error_class_exits_with_a_documented_code() -> None:
    found = vars(errors).values()
    classes = [c for c in found if isinstance(c, type) and issubclass(c, HermesError)]
    assert len(classes) >= 8
    for cls in classes:
        assert cls.exit_code in EXIT_CODES, cls.__name__
    assert errors.OptionError.exit_code == 2 and issubclass(errors.OptionError, errors.ConfigError)
    assert errors.ConfigError.exit_code == 7
