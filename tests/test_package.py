"""The package's shape: the public API where the README says, modules of readable size, and the
import contracts of pyproject.toml (checked by ``lint-imports`` in CI; here, the size rule and the
API, which no linter checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT, HARD_LIMIT = 400, 500
REASON = "# Over 400 lines:"


def _modules() -> list[Path]:
    return sorted(p for pkg in ("hermes_model", "hermes_cli") for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_readable(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) <= LIMIT:
        return
    assert len(lines) <= HARD_LIMIT, f"{path.name}: {len(lines)} lines, split it"
    assert lines[0].startswith(REASON), f"{path.name}: {len(lines)} lines and no reason at its top"


def test_public_api_is_lazy_and_complete() -> None:
    code = (
        "import sys, hermes_model\n"
        "assert 'torch' not in sys.modules, 'importing hermes_model imported torch'\n"
        "from hermes_model import Segmenter, create_model, load_checkpoint, save_checkpoint\n"
        "from hermes_model.pipeline.segmenter import Segmenter as Home\n"
        "assert Segmenter is Home\n"
        "from hermes_model.io import read_image, ImageMeta\n"
        "from hermes_model.inference import Segmenter as Alias, WindowSettings\n"
        "assert Alias is Segmenter\n"
        "print(hermes_model.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == __import__("hermes_model").__version__


def test_tests_mirror_the_package() -> None:
    packages = {p.parent.name for p in (ROOT / "hermes_model").glob("*/__init__.py")}
    missing = sorted(name for name in packages if not (ROOT / "tests" / name).is_dir())
    assert not missing, f"no tests/<folder> for hermes_model/<folder>: {missing}"
