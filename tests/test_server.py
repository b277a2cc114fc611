"""lightning-tt serve (lightning_tt.server): every route, every refused request, the batcher, reload, and the
command itself in a subprocess (SIGHUP, a taken port)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # TestClient

from fastapi.testclient import TestClient  # noqa: E402

from lightning_tt.serve import LAST_LISTEN, Recommender, recommend  # noqa: E402
from lightning_tt.server import RequestBatcher, create_app  # noqa: E402

LOCAL = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def client(served_export):
    with TestClient(create_app(served_export.flat), client=LOCAL, raise_server_exceptions=True) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def served(served_export) -> Recommender:
    return Recommender(served_export.flat)


def known(served: Recommender, n: int = 3) -> tuple[list[int], list[int]]:
    """The raw ids of the first n known users and of n catalogue items."""
    users = np.asarray(served.data["user_ids"], dtype=np.int64)[2:2 + n].tolist()
    items = served.raw_items[[0, 7, 19][:n]].tolist()
    return users, items


def test_recommend_returns_the_lists_of_the_recommend_command(client, served, served_export):
    users, items = known(served)
    for user, seed in zip(users, items):
        response = client.post("/recommend", json={"user_id": user, "seed_item": seed, "k": 7})
        assert response.status_code == 200, response.text
        body = response.json()
        single, notes = recommend(served_export.flat, served_export.ckpt, user, seed, k=7)
        assert not notes and [i["item_id"] for i in body["items"]] == [i for i, _ in single]
        assert [i["score"] for i in body["items"]] == pytest.approx([s for _, s in single], abs=1e-5)
        assert (body["seeded_by"], body["fallback"], body["k"], body["exclude_seen"]) == ("request", None, 7, True)
        assert body["index"]["factory"] == "Flat" and body["index"]["export"] == str(served_export.flat)
        row = {int(raw): r for r, raw in enumerate(served.raw_items)}
        for entry in body["items"]:  # artist and album are the raw ids of the item's side tables
            index = row[entry["item_id"]] + 2
            for name in ("artist", "album"):
                side = int(served.data[f"item_{name}"][index])  # 1: the data has none for this item
                expected = int(served.data[f"{name}_ids"][side]) if side >= 2 else None
                assert entry[f"{name}_id"] == expected


def test_without_a_seed_the_users_last_listen_seeds_the_request(client, served):
    users, _ = known(served, 1)
    body = client.post("/recommend", json={"user_id": users[0], "k": 5}).json()
    user = served.user_indices(users)
    last = served.data["stream_item"][served.data["user_offsets"][user[0] + 1] - 1]
    expected = served.top_k(user, np.array([last]), 5)[1][0]
    assert body["seeded_by"] == "last_listen" and body["seed_item"] is None
    assert [i["item_id"] for i in body["items"]] == served.raw_items[expected].tolist()


def test_exclude_seen_is_the_models_default_and_can_be_turned_off(client, served):
    users, items = known(served, 1)
    user = served.user_indices(users)
    positives = {int(served.raw_items[i - 2]) for i in served.gather.seen_items.padded(user)[0] if i >= 2}
    assert positives, "the first user has positives"
    k = served.items
    kept = client.post("/recommend", json={"user_id": users[0], "seed_item": items[0], "k": k}).json()["items"]
    every = client.post("/recommend", json={"user_id": users[0], "seed_item": items[0], "k": k,
                                            "exclude_seen": False}).json()
    assert not positives & {i["item_id"] for i in kept} and len(kept) == k - len(positives)
    assert positives <= {i["item_id"] for i in every["items"]} and every["exclude_seen"] is False


def test_an_unknown_user_with_a_seed_is_served_from_the_seed(client, served):
    _, items = known(served, 1)
    body = client.post("/recommend", json={"user_id": 987654321, "seed_item": items[0], "k": 4}).json()
    expected = served.top_k(np.array([1]), served.item_indices(items), 4)[1][0]
    assert body["fallback"] == "unknown_user" and [i["item_id"] for i in body["items"]] == served.raw_items[
        expected].tolist()


@pytest.mark.parametrize("body, status, says", [
    (b'{"user_id": 5', 400, "request body: malformed JSON"),
    (b"not json", 400, "malformed JSON"),
    (b"{}", 422, "user_id: Field required"),
    (b"[1, 2]", 422, "request body: Input should be a valid dictionary"),
    (b'{"user_id": "5"}', 422, "user_id: Input should be a valid integer"),
    (b'{"user_id": 5.5}', 422, "user_id: Input should be a valid integer"),
    (b'{"user_id": true}', 422, "user_id: Input should be a valid integer"),
    (b'{"user_id": -1}', 422, "user_id: Input should be greater than or equal to 0"),
    (b'{"user_id": 1e30}', 422, "user_id"),
    (b'{"user_id": 123456789012345678901234567890}', 422, "user_id: Input should be less than or equal to"),
    (b'{"user_id": 5, "k": "10"}', 422, "k: Input should be a valid integer"),
    (b'{"user_id": 5, "k": 0}', 422, "k: Input should be greater than or equal to 1"),
    (b'{"user_id": 5, "k": -3}', 422, "k: Input should be greater than or equal to 1"),
    (b'{"user_id": 5, "k": 10000000}', 422, "k: 10000000 is larger than the catalogue of"),
    (b'{"user_id": 5, "seed_item": "x"}', 422, "seed_item: Input should be a valid integer"),
    (b'{"user_id": 5, "exclude_seen": "yes"}', 422, "exclude_seen: Input should be a valid boolean"),
    (b'{"user_id": 5, "seed": 3}', 422, "seed: unknown field"),
    (b'{"user_id": 987654321}', 404, "user_id: 987654321 is not a known user, and no seed_item"),
])
def test_bad_requests_get_a_4xx_with_one_line_naming_the_field(client, body, status, says):
    response = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error and list(response.json()) == ["error"]


def test_an_unknown_seed_item_is_a_404_naming_it(client, served):
    users, _ = known(served, 1)
    response = client.post("/recommend", json={"user_id": users[0], "seed_item": 123456789})
    assert response.status_code == 404
    assert response.json()["error"].startswith("seed_item: 123456789 is not in the model's catalogue")


def test_wrong_routes_and_methods_are_one_line_json(client):
    assert client.get("/nowhere").status_code == 404 and "GET /nowhere: Not Found" in client.get("/nowhere").text
    response = client.get("/recommend")
    assert response.status_code == 405 and response.json()["error"] == "GET /recommend: Method Not Allowed"
    assert client.get("/api/browse", params={"user_id": "abc"}).json()["error"].startswith("user_id: ")
    assert client.get("/api/browse", params={"user_id": 987654321}).status_code == 404


def test_health_and_info_describe_the_export(client, served_export):
    health = client.get("/health").json()
    meta = json.loads((served_export.flat / "export.json").read_text())
    assert health == {"status": "ok", "items": meta["items"], "export": str(served_export.flat),
                      "generation": health["generation"]}
    info = client.get("/info").json()
    assert info["checkpoint"] == meta["checkpoint"] == str(served_export.ckpt.resolve())
    for key in ("data_fingerprint", "factory", "items", "dim", "nprobe", "k_factor", "target_overlap"):
        assert info[key] == meta[key], key
    assert info["calibrated_overlap"] is None and info["exclude_seen"] is True
    assert (info["max_batch_size"], info["max_wait_ms"]) == (64, 1.0)


def test_the_batcher_searches_waiting_requests_together(served, served_export):
    """Requests that wait together are one search per (export, k); each gets its own list, equal to
    Recommender.top_k's for it alone, and a request keeps the export it arrived under."""
    other = Recommender(served_export.ivf)
    users, items = known(served, 3)
    user, seed = served.user_indices(users), served.item_indices(items)

    async def run():
        batcher = RequestBatcher(max_batch_size=16, max_wait_ms=200)
        batcher.start()
        asked = [(served, u, s, 5, True) for u, s in zip(user, seed)] + [(served, user[0], LAST_LISTEN, 3, False),
                                                                          (other, user[1], seed[1], 5, True)]
        found = await asyncio.gather(*(batcher.submit(*a) for a in asked))
        await batcher.stop()
        return asked, found, batcher.batches

    asked, found, batches = asyncio.run(run())
    assert batches == 3  # (served, 5), (served, 3), (other, 5)
    for (recommender, u, s, k, exclude), (scores, rows) in zip(asked, found):
        alone_scores, alone_rows = recommender.top_k(np.array([u]), np.array([s]), k, exclude_seen=exclude)
        assert rows.tolist() == alone_rows[0].tolist() and np.allclose(scores, alone_scores[0], atol=1e-5)


def test_reload_swaps_a_good_export_and_refuses_a_broken_one(served_export, tmp_path):
    app = create_app(served_export.flat)
    with TestClient(app, client=LOCAL) as local:
        users, items = known(app.state.served, 1)
        ask = {"user_id": users[0], "seed_item": items[0], "k": 5}
        before = local.post("/recommend", json=ask).json()
        reloaded = local.post("/reload", json={"export": str(served_export.ivf)})
        assert reloaded.status_code == 200 and reloaded.json()["generation"] == 1
        assert local.get("/info").json()["factory"].startswith("IVF16")
        assert local.post("/recommend", json=ask).json()["index"]["generation"] == 1
        broken = tmp_path / "broken"
        shutil.copytree(served_export.flat, broken)
        (broken / "index.faiss").write_bytes(b"not an index")
        for target, says in ((tmp_path / "nowhere", "no export.json"), (broken, "damaged export")):
            refused = local.post("/reload", json={"export": str(target)})
            assert refused.status_code == 409 and says in refused.json()["error"]
            assert f"still serving {served_export.ivf}" in refused.json()["error"]
        assert local.get("/health").json()["generation"] == 1  # the good one still serves
        assert local.post("/reload", content=b"{").status_code == 400
        assert local.post("/reload", json={"export": 3}).json()["error"].startswith("export: ")
        assert local.post("/reload").json()["serving"] == str(served_export.ivf)  # no body: the same directory again
        assert local.post("/recommend", json=ask).json()["items"][0]["item_id"] == before["items"][0]["item_id"]
    with TestClient(create_app(served_export.flat), client=("10.1.2.3", 50000)) as remote:
        refused = remote.post("/reload", json={"export": str(served_export.ivf)})
        assert refused.status_code == 403 and "127.0.0.1" in refused.json()["error"]


def test_browse_marks_the_test_window_listens_of_the_users_list(client, served):
    data = served.data
    paper_users = np.asarray(data["paper_test_user"], dtype=np.int64)
    assert (np.diff(paper_users) > 0).all()  # one case per user, sorted: what BrowseView.view's search assumes
    raw_users = np.asarray(data["user_ids"], dtype=np.int64)
    test_start = data.boundaries["test_start"]
    any_hit = False
    for u in paper_users[:10]:
        view = client.get("/api/browse", params={"user_id": int(raw_users[u]), "k": 50, "exact": True}).json()
        assert view["mode"] == "test_window" and view["as_of"] == test_start
        assert view["history"] and all(e["timestamp"] < test_start for e in view["history"])  # nothing of the window
        times = [e["timestamp"] for e in view["history"]]
        assert times == sorted(times, reverse=True)
        targets = set(view["targets"])
        assert targets and all(i["hit"] == (i["item_id"] in targets) for i in view["ann"] + view["exact"])
        assert [i["item_id"] for i in view["ann"]] == [i["item_id"] for i in view["exact"]]  # a flat export
        any_hit |= any(i["hit"] for i in view["ann"])
    assert any_hit
    everyone = set(range(2, len(raw_users))) - set(paper_users.tolist())
    if everyone:  # a user with no test window: the list of now, nothing marked
        view = client.get("/api/browse", params={"user_id": int(raw_users[min(everyone)])}).json()
        assert view["mode"] == "now" and not view["targets"] and not any("hit" in i for i in view["ann"])
    listed = client.get("/api/users", params={"prefix": str(raw_users[paper_users[0]])[:1], "limit": 5}).json()
    assert 0 < len(listed["users"]) <= 5 and listed["users"][0]["test_case"]
    assert all(str(u["user_id"]).startswith(str(raw_users[paper_users[0]])[:1]) for u in listed["users"])


def test_the_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="ann"' in page.text and "/api/browse" in page.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow  # three processes that each import torch and open the export: about 20 s on 2 cores
def test_the_serve_command_answers_reloads_on_sighup_and_stops(served_export, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "lightning_tt.cli", "serve", "--export", str(served_export.flat),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    try:
        first = server.stdout.readline()
        assert f"on http://127.0.0.1:{port}/" in first, first
        deadline = time.monotonic() + 60
        while True:
            try:
                assert get(f"http://127.0.0.1:{port}/health")["status"] == "ok"
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.2)
        server.send_signal(signal.SIGHUP)
        assert "SIGHUP: now serving" in server.stdout.readline()
        assert get(f"http://127.0.0.1:{port}/health")["generation"] == 1
        taken = subprocess.run([sys.executable, "-m", "lightning_tt.cli", "serve", "--export", str(served_export.flat),
                                "--port", str(port)], capture_output=True, text=True, timeout=120)
        assert taken.returncode == 1 and f"--port {port}: cannot listen there" in taken.stderr
        assert len(taken.stderr.strip().splitlines()) == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal, so the status is SIGTERM's
    assert server.returncode in (0, -signal.SIGTERM) and "Traceback" not in server.stdout.read()
    missing = subprocess.run([sys.executable, "-m", "lightning_tt.cli", "serve", "--export", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no export.json" in missing.stderr and "Traceback" not in missing.stderr
