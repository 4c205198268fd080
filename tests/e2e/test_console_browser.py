"""The console in a real browser (Debian's chromium, driven by Playwright) against the
real local stack: sign in, order an evaluation of the demo model, watch it complete, open
it, see the 10x10 heatmap and gallery images that load, open the leaderboard, sign out.

Screenshots of every page go to ``.artifacts/console/`` (git-ignored) for a person to look
at. The browser is installed by ``make browser`` (``make test`` runs it); Playwright's own
browser download is never used.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

from assay.client import Client

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".artifacts" / "console"
CHROMIUM = os.environ.get("ASSAY_CHROMIUM", "/usr/bin/chromium")


def at(path: str):
    """A URL predicate on the path alone (a sign-in URL's ``next=`` names other paths)."""
    return lambda url: urllib.parse.urlparse(url).path == path


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: run `make browser` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def uploaded(stack):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devstack import digits

    client = Client(stack["ASSAY_URL"], stack["ASSAY_API_KEY"], progress=False)
    model_dir = digits.cached_digits_vit(ROOT / ".cache" / "fixtures")
    archive = digits.write_imagefolder_archive(
        Path(stack["STATE"]) / "console-digits.zip", {"test": digits.digits_images("test")}
    )
    model = client.models.upload(model_dir, name="console-vit", labels={"suite": "browser"}, wait=True)
    dataset = client.datasets.upload(archive, name="console-digits", wait=True)
    assert model.status == dataset.status == "ready", (model.reason, dataset.reason)
    return model, dataset


def test_a_person_evaluates_the_demo_model_in_the_browser(stack, browser, uploaded):
    model, dataset = uploaded
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    base = stack["ASSAY_URL"]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []  # CSP violations and script errors show up as console errors
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    def shot(name: str) -> None:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    page.goto(base + "/ui/evaluations")
    assert "/ui/sign-in" in page.url
    shot("01-sign-in")
    page.fill("#api_key", stack["ASSAY_API_KEY"])
    page.click("#sign-in")
    page.wait_for_url(at("/ui/evaluations"))
    assert stack["ASSAY_API_KEY"] not in page.content() and stack["ASSAY_API_KEY"] not in page.url

    page.click("#order")
    page.select_option("#model_id", model.id)
    page.select_option("#dataset_id", dataset.id)
    page.fill("#splits", "test")
    shot("02-order")
    page.click("#order-submit")
    page.wait_for_url(at("/ui/evaluations"))
    row = page.locator("#evaluations tbody tr", has_text="console-vit-console-digits-test")
    assert row.count() == 1
    shot("03-evaluations-running")
    # The list refreshes itself while anything runs; no reload from here.
    page.wait_for_selector("#evaluations tr[data-status=complete] >> text=console-vit-console-digits-test", timeout=300_000)
    shot("04-evaluations-complete")

    page.click("text=console-vit-console-digits-test")
    page.wait_for_selector("#heatmap")
    assert page.locator("#heatmap rect.cell").count() == 100
    assert page.get_attribute("#heatmap", "data-classes") == "10"
    page.hover("#heatmap rect.cell >> nth=0")
    assert re.fullmatch(r"true \S+ → predicted \S+: \d+", page.inner_text("#heatmap-readout").strip())
    images = page.locator("#gallery img")
    assert images.count() == 24
    page.wait_for_load_state("networkidle")
    for i in range(images.count()):
        images.nth(i).scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
    shot("05-evaluation")
    page.check("input[name=errors]")
    page.check("input[name=order]")
    page.click("#instances button[type=submit]")
    page.wait_for_selector("#gallery")
    assert page.locator("#gallery li.right").count() == 0
    shot("06-evaluation-mistakes")

    page.click("#leaderboard-link")
    page.wait_for_selector("#leaderboard")
    assert page.locator("#leaderboard tbody tr", has_text="console-vit").count() == 1
    shot("07-leaderboard")

    for name, path, ready in (
        ("08-models", "/ui/models", "table.list"),
        ("09-model", f"/ui/models/{model.id}", "dl.facts"),
        ("10-datasets", "/ui/datasets", "table.list"),
        ("11-dataset", f"/ui/datasets/{dataset.id}", "dl.facts"),
        ("12-api", "/ui/api", ".swagger-ui .info"),
    ):
        page.goto(base + path)
        page.wait_for_selector(ready)
        shot(name)

    page.click("#sign-out")
    page.wait_for_url(at("/ui/sign-in"))
    page.goto(base + "/ui/evaluations")
    assert "/ui/sign-in" in page.url
    shot("13-signed-out")
    assert not problems, problems
    context.close()
