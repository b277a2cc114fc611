"""The browse page in a real browser: Debian's chromium (/usr/bin/chromium) driven by Playwright, against
a server on 127.0.0.1 serving the tiny twin's export. Skips, saying why, without a browser or Playwright;
.ci/run installs both."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

#: Debian's chromium package (.ci/run installs it; Playwright's own browser downloads are not reachable here),
#: or the Chrome of a GitHub runner.
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def page_server(served_export):
    """(base URL, app) of a uvicorn server on a free loopback port, stopped after the module."""
    import uvicorn

    from lightning_tt.server import create_app

    app = create_app(served_export.flat)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: install Debian's package (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_the_page_lists_a_users_history_and_marks_the_hits(page_server, browser, tmp_path):
    base, app = page_server
    served = app.state.served
    users = np.asarray(served.data["paper_test_user"], dtype=np.int64)
    k = 50
    views = {int(u): app.state.browse.view(int(u), k, exact=True) for u in users[:20]}
    user, view = max(views.items(), key=lambda item: sum(i["hit"] for i in item[1]["ann"]))
    hits = [i["item_id"] for i in view["ann"] if i["hit"]]
    assert hits, "some test-window user has a hit in the top 50"
    raw_user = int(served.data["user_ids"][user])

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{base}/?user={raw_user}&k={k}")
    page.wait_for_selector("#ann tbody tr")
    rows = page.locator("#ann tbody tr")
    assert rows.count() == k
    listed = [int(text) for text in page.locator("#ann tbody tr td:nth-child(2)").all_inner_texts()]
    assert listed == [i["item_id"] for i in view["ann"]]
    marked = [int(text) for text in page.locator("#ann tbody tr.hit td:nth-child(2)").all_inner_texts()]
    assert marked == hits and page.locator("#ann tbody tr.hit td.mark").all_inner_texts() == ["\u2713"] * len(hits)
    history = page.locator("#history tbody tr")
    assert history.count() == len(view["history"]) > 0
    assert page.locator("#history tbody tr").first.locator("td").nth(1).inner_text() == view["history"][0]["event_type"]
    summary = page.locator("#summary")
    assert summary.get_attribute("data-mode") == "test_window"
    assert f"hits in the top {k}: ANN {len(hits)}" in summary.inner_text()
    assert page.locator("#exact-column").is_hidden()

    page.check("#exact")  # the toggle: exact search beside the ANN index
    page.wait_for_selector("#exact-column", state="visible")
    page.wait_for_function(f"document.querySelectorAll('#exact-list tbody tr').length === {k}")
    exact = [int(text) for text in page.locator("#exact-list tbody tr td:nth-child(2)").all_inner_texts()]
    assert exact == [i["item_id"] for i in view["exact"]]
    assert "exact" in page.url and ", exact " in summary.inner_text()
    shot = tmp_path / "browse.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.fill("#user", "987654321")
    page.click("#show")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "987654321 is not a known user" in page.locator("#error").inner_text()
    assert not errors  # no JavaScript error on the way
    page.close()
