"""``hermes segment --report FILE.html``: the page for a batch, checked as a user sees it, in a
real headless browser (Debian's chromium through selenium and chromium-driver): it loads with no
console errors, every thumbnail loads, a click on a volume column sorts the rows, and the filter
shows the failed and warned cases. Skips with a reason where chromium is absent."""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.batch.outcome import BatchReport, CaseReport
from hermes_model.batch.report import render, write_report
from hermes_model.config import PreprocessConfig
from hermes_model.pipeline import ood
from hermes_model.weights import hub
from hermes_model.weights.checkpoint import read_metadata, replace_metadata

runner = CliRunner()
TASKS = ["hippocampus/anterior", "hippocampus/posterior"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Set to a path (e.g. docs/report-example.png) to keep the browser's screenshot there.
SCREENSHOT = os.environ.get("HERMES_REPORT_SCREENSHOT")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model (one window per scan) carrying the bundled model's training
    statistics, so that an unusual scan is warned about."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    plain = save_checkpoint(
        create_model("tiny", tasks=TASKS), folder / "plain.safetensors",
        preprocess=PreprocessConfig(spacing=(4.0, 4.0, 4.0), patch_size=(32, 32, 32)),
    )  # fmt: skip
    statistics = read_metadata(hub.resolve_weights(None).path)[ood.KEY]
    doc = {**read_metadata(plain), ood.KEY: statistics}
    return replace_metadata(plain, folder / "tiny.safetensors", doc)


@pytest.fixture(scope="module")
def batch(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four real hippocampus scans, one scan at twice their spacing (warned), one broken file."""
    import nibabel as nib
    import numpy as np
    from conftest import DATA_DIR

    images = DATA_DIR / "hippocampus" / "imagesTr"
    if not images.is_dir():
        pytest.skip(f"real data {images} is absent (expected ../shared/data)")
    folder = tmp_path_factory.mktemp("batch")
    scans = folder / "scans"
    scans.mkdir()
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_026", "hippocampus_190"):
        shutil.copy(images / f"{case}.nii.gz", scans)
    img = nib.load(images / "hippocampus_004.nii.gz")
    coarse = img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), coarse), scans / "coarse_2mm.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    page = folder / "pages" / "cohort.html"
    result = runner.invoke(app, [
        "segment", str(scans), "-o", str(folder / "out"), "--weights", str(weights),
        "--device", "cpu", "--report", str(page), "--force",  # the coarse scan: warned, kept
    ])  # fmt: skip
    assert result.exit_code == 1, result.output  # one case failed, the others were written
    return {"page": page, "out": folder / "out"}


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-status" in values:
            self.rows.append(values)
        if tag == "img":
            self.images.append(values["src"])


def test_page_has_a_row_per_case_and_images_beside_it(batch):
    parser = _Rows()
    parser.feed(batch["page"].read_text(encoding="utf-8"))
    statuses = sorted(row["data-status"] for row in parser.rows)
    assert statuses == ["done"] * 5 + ["failed"]
    assert [row["data-case"] for row in parser.rows if row["data-warned"] == "1"] == ["coarse_2mm"]
    assert len(parser.images) == 5
    for src in parser.images:
        assert not src.startswith(("http:", "https:", "/")), src  # relative: beside the page
        assert (batch["page"].parent / src).is_file()
    text = batch["page"].read_text(encoding="utf-8")
    assert "<link" not in text and 'src="http' not in text  # self-contained


def test_unwritable_report_path_is_one_line_before_any_work(weights, tmp_path):
    scan = Path(__file__).resolve().parents[2] / "examples" / "hippocampus_001.nii.gz"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for page, code, words in [
        (blocker / "report.html", 6, "cannot create the output folder"),
        (tmp_path / "report.txt", 2, "name it *.html"),
    ]:
        out = tmp_path / "out"
        result = runner.invoke(app, [
            "segment", str(scan), "-o", str(out), "--weights", str(weights), "--report", str(page),
        ])  # fmt: skip
        assert result.exit_code == code, result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and words in lines[0], result.stderr
        assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def _browser(tmp_path: Path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "chromium and chromedriver are absent: apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) is absent")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,900",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _column_values(driver, index: int) -> list[float | None]:
    script = (
        "return Array.from(document.querySelectorAll('#cases tbody tr'))"
        ".filter(r => !r.classList.contains('hidden'))"
        ".map(r => r.cells[arguments[0]].getAttribute('data-sort'));"
    )
    values = driver.execute_script(script, index)
    return [None if v in (None, "", "None") else float(v) for v in values]


def _header_index(driver, starts: str) -> int:
    headers = driver.find_elements("css selector", "#cases thead th")
    return next(n for n, th in enumerate(headers) if th.text.startswith(starts))


def test_page_in_headless_chromium(batch, tmp_path):
    driver = _browser(tmp_path)
    try:
        driver.get(batch["page"].as_uri())
        logs = driver.get_log("browser")
        assert not [entry for entry in logs if entry["level"] == "SEVERE"], logs
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.src);"
        )
        assert broken == [] and len(driver.find_elements("css selector", "img")) == 5
        column = _header_index(driver, "Hippocampus, anterior")
        before = _column_values(driver, column)
        button = driver.find_elements("css selector", "#cases thead th")[column]
        button.find_element("css selector", "button").click()
        ascending = _column_values(driver, column)
        numbers = [v for v in ascending if v is not None]
        assert numbers == sorted(numbers) and ascending[-1] is None  # empty (failed) cell last
        assert ascending != before
        button.find_element("css selector", "button").click()
        descending = [v for v in _column_values(driver, column) if v is not None]
        assert descending == sorted(numbers, reverse=True)
        select = driver.find_element("id", "filter")
        select.find_element("css selector", "option[value=problems]").click()
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#cases tbody tr'))"
            ".filter(r => !r.classList.contains('hidden')).map(r => r.dataset.case);"
        )
        assert sorted(shown) == ["broken", "coarse_2mm"]
        select.find_element("css selector", "option[value=all]").click()
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if SCREENSHOT:
            shutil.copy(shot, SCREENSHOT)
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def test_a_thousand_case_page_sorts_in_chromium(tmp_path):
    cases = [
        CaseReport(
            f"case_{n:04d}", f"/data/case_{n:04d}.nii.gz", "failed" if n % 97 == 0 else "done",
            message="broken" if n % 97 == 0 else "", seconds=1.0 + n % 7,
            volumes_ml={} if n % 97 == 0 else {TASKS[0]: (n * 37) % 101 / 10, TASKS[1]: n / 100},
        )
        for n in range(1000)
    ]  # fmt: skip
    page = write_report(BatchReport(cases), tmp_path / "big.html")
    assert (
        page.stat().st_size < 2_000_000 and render(BatchReport(cases), page).count("<tr ") == 1000
    )
    driver = _browser(tmp_path)
    try:
        driver.get(page.as_uri())
        column = _header_index(driver, "Hippocampus, anterior")
        driver.find_elements("css selector", "#cases thead th")[column].find_element(
            "css selector", "button"
        ).click()
        values = _column_values(driver, column)
        numbers = [v for v in values if v is not None]
        assert len(numbers) == 989 and numbers == sorted(numbers) and values[-11:] == [None] * 11
        assert driver.find_element("id", "count").text == "1000 of 1000 cases shown"
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
