"""The web page: `osum web` started for real, driven in headless Chromium (Debian's, through Playwright):
upload a real clip, pick a task, run, read the answer; a screenshot is saved beside the test's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, wait_until_up

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("OSUM_SCREENSHOTS", Path(__file__).resolve().parent.parent / "build" / "screenshots"))


def test_answer_helper(trained_model):
    """The page's callback without a browser: transcript, labels with confidences, errors for no audio."""
    from osum.infer.api import SpeechModel
    from osum.serve.web import answer

    model = SpeechModel.load(trained_model[0])
    row = trained_model[1][2]
    text, labels, result = answer(model, row["audio"], "<TRANSCRIBE> <GENDER>", "", "")
    assert text == row["text"] and list(labels) == [f"gender: {row['gender']}"] and result["gender"] == row["gender"]
    with pytest.raises(ValueError, match="give some audio first"):
        answer(model, None, "<TRANSCRIBE>", "", "")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh dev installs it)")
def test_web_page_in_a_real_browser(trained_model, tmp_path):
    model_dir, rows = trained_model
    row = rows[6]
    port = free_port()
    log = open(tmp_path / "web.log", "w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1,localhost"}
    server = subprocess.Popen([sys.executable, "-m", "osum.cli", "web", "--model", str(model_dir), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, server, timeout=180, log_path=tmp_path / "web.log")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle", timeout=120_000)
            page.locator("#audio input[type=file]").set_input_files(row["audio"])
            page.locator("#task input").click()
            page.get_by_role("option", name="<TRANSCRIBE> <GENDER>", exact=True).click()
            page.locator("#run").click()
            answer = page.locator("#text textarea")
            answer.wait_for(timeout=60_000)
            page.wait_for_function("document.querySelector('#text textarea').value.length > 0", timeout=120_000)
            assert answer.input_value() == row["text"]
            labels = page.locator("#labels")
            labels.get_by_text(f"gender: {row['gender']}").first.wait_for(timeout=30_000)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shot = SCREENSHOTS / "web.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # A request the model cannot answer (translation without a target language) shows an error
            # message on the page, and the page keeps working.
            page.locator("#task input").click()
            page.get_by_role("option", name="<TRANSLATE>", exact=True).click()
            page.locator("#run").click()
            page.get_by_text("needs a target language").first.wait_for(timeout=60_000)
            page.locator("#task input").click()
            page.get_by_role("option", name="<TRANSCRIBE>", exact=True).click()
            page.locator("#run").click()
            page.wait_for_function(
                "document.querySelector('#labels') && !document.querySelector('#labels').innerText.includes('gender')",
                timeout=120_000)
            assert answer.input_value() == row["text"]
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
