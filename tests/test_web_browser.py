"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Runs appear and change state without a reload, a pipeline's stage changes
colour as its runs finish, compare renders, and no element spills out of its
panel at 1280x800. Screenshots of every page are saved under the folder the
session prints. Skipped only where there is no chromium and CI is unset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

import projections
from events import NewEvent
from events.types import RunFinished, RunStarted, RunSubmitted
from tests.conftest import labctl_bin, run_cli
from tests.webserver import running_server, seed_pipeline, seed_world

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(
        "no chromium at /usr/bin/chromium (apt-get install -y chromium; required in CI)", allow_module_level=True
    )

if not os.environ.get("CI"):
    pytest.importorskip("playwright.sync_api")  # in CI a missing package fails the import below
from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("LABCTL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nbrowser screenshots: {folder}")
    return folder


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
    yield p
    context.close()
    assert errors == [], errors


def _live(page: Page) -> None:
    """Wait until the page's event stream is open."""
    page.wait_for_function("document.body.dataset.live === 'on'", timeout=15_000)


def test_a_run_submitted_through_the_cli_appears_and_changes_state_without_a_reload(
    page: Page, db_url: str, labctl_env: dict[str, str], tmp_path: Path, shots: Path
) -> None:
    recipe = tmp_path / "hello.toml"
    recipe.write_text('name = "hello-browser"\ncommand = ["bash", "-c", "sleep 1; echo hi"]\n')
    with running_server(db_url) as base:
        page.goto(f"{base}/runs")
        _live(page)
        page.evaluate("window.__notReloaded = true")
        out = run_cli(labctl_env, "run", str(recipe), check=True)
        run_id = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("run_id:"))
        row = page.locator(f"tr[data-run='{run_id}']")
        row.wait_for(timeout=15_000)
        assert "hello-browser" in row.inner_text()
        page.screenshot(path=str(shots / "runs-submitted.png"), full_page=True)
        agent = subprocess.Popen(
            [*labctl_bin(), "agent", "--drain"], env=labctl_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            page.wait_for_selector(f"tr[data-run='{run_id}'][data-status='succeeded']", timeout=60_000)
        finally:
            agent.wait(timeout=60)
        assert page.evaluate("window.__notReloaded") is True  # the same document: updated live, not reloaded
        page.screenshot(path=str(shots / "runs-succeeded.png"), full_page=True)
        page.goto(f"{base}/runs/{run_id}")
        page.wait_for_selector("pre.log")
        assert "hi" in page.inner_text("pre.log")
        page.screenshot(path=str(shots / "run.png"), full_page=True)


def _fill(page: Page, stage: str) -> str:
    return str(page.eval_on_selector(f"g[data-node='{stage}'] rect", "r => getComputedStyle(r).fill"))


def test_a_pipeline_stage_changes_colour_as_its_runs_finish(
    page: Page, db_url: str, conn: psycopg.Connection[Any], shots: Path
) -> None:
    seed_pipeline(conn, "pipeline_demo")
    with running_server(db_url) as base:
        page.goto(f"{base}/pipelines/pipeline_demo")
        _live(page)
        before = _fill(page, "prepare")
        assert page.get_attribute("g[data-node='prepare']", "data-status") == "created"  # waiting for its turn
        now = datetime.now(UTC)
        projections.record(conn, [NewEvent("run-run_demop", RunStarted(run_id="run_demop", started_at=now))])
        page.wait_for_selector("g[data-node='prepare'][data-status='running']", timeout=15_000)
        running = _fill(page, "prepare")
        projections.record(
            conn, [NewEvent("run-run_demop", RunFinished(run_id="run_demop", state="succeeded", exit_code=0))]
        )
        page.wait_for_selector("g[data-node='prepare'][data-status='succeeded']", timeout=15_000)
        done = _fill(page, "prepare")
        assert len({before, running, done}) == 3, (before, running, done)
        page.screenshot(path=str(shots / "pipeline.png"), full_page=True)


OVERFLOW_JS = """
() => {
  const bad = [];
  const page = document.documentElement.scrollWidth;
  if (page > window.innerWidth) bad.push(`page scrolls sideways: ${page}`);
  for (const panel of document.querySelectorAll('.panel')) {
    const name = panel.id || panel.className;
    if (panel.scrollWidth > panel.clientWidth + 1) bad.push(`${name} scrolls: ${panel.scrollWidth}`);
    const box = panel.getBoundingClientRect();
    for (const el of panel.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (r.right > box.right + 1 || r.left < box.left - 1) {
        const what = `${el.tagName.toLowerCase()}.${el.className.baseVal ?? el.className}`;
        bad.push(`${name} > ${what} [${r.left | 0}, ${r.right | 0}] outside [${box.left | 0}, ${box.right | 0}]`);
        if (bad.length > 10) return bad;
      }
    }
  }
  return bad;
}
"""


def test_every_page_fits_1280x800_and_compare_overlays_the_runs(
    page: Page, db_url: str, conn: psycopg.Connection[Any], shots: Path
) -> None:
    seed_world(conn)
    seed_pipeline(conn, "pipeline_demo")
    xss = RunSubmitted(
        run_id="run_xss",
        name="<script>alert(1)</script>",
        user="mallory",
        executor="local",
        run_dir="/r",
        recipe={"params": {"<img src=x onerror=alert(2)>": 1}},
    )
    projections.record(conn, [NewEvent("run-run_xss", xss, 0)])
    pages = {
        "runs": "/runs",
        "run": "/runs/run_t1",
        "pipelines": "/pipelines",
        "pipeline": "/pipelines/pipeline_demo",
        "sweep": "/sweeps/sweep_demo",
        "evals": "/evals",
        "compare": "/compare?ids=run_t1,run_t2",
        "artifacts": "/artifacts",
        "artifact": "/artifacts/artifact_run_t1_2",
        "events": "/events",
        "xss": "/runs/run_xss",
    }
    with running_server(db_url) as base:
        for name, path in pages.items():
            page.goto(base + path)
            page.wait_for_load_state("load")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            assert page.evaluate(OVERFLOW_JS) == [], name
        page.goto(f"{base}/compare?ids=run_t1,run_t2")
        assert page.locator("table.compare tr.differs th", has_text="lr").count() == 1
        assert page.locator("svg.plot polyline").count() >= 1
        assert page.locator("ul.legend a").all_inner_texts() == ["run_t1 train", "run_t2 train"]
        page.goto(f"{base}/runs/run_xss")
        assert "<script>alert(1)</script>" in page.inner_text("h1")  # shown as text, never run


def test_chromium_is_the_system_one(browser: Browser) -> None:
    assert shutil.which("chromium") == CHROMIUM or Path(CHROMIUM).exists()
    assert browser.version
