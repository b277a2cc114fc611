"""``lightning-tt serve``: an export behind HTTP (FastAPI on uvicorn), with a browse page.

A request's path, start to end::

    POST /recommend {"user_id": U, "seed_item": S?, "k": 100, "exclude_seen": b?}
      -> RecommendRequest (pydantic; a mistake is a 4xx with one line of JSON naming the field)
      -> vocabulary indices (Recommender.user_indices / item_indices; unknown ids decided here)
      -> RequestBatcher: the requests waiting together (at most ``max_batch_size``, gathered for at most
         ``max_wait_ms`` after the first) become one batch
      -> Recommender.top_k on that batch: the query features, one query-tower forward, one index search,
         the same call as ``recommend --batch`` (lightning_tt.serve)
      -> raw item, artist and album ids with scores, as JSON.

Other routes: ``GET /health``, ``GET /info`` (export metadata and serving settings), ``POST /reload``
(loopback clients only; SIGHUP does the same for the served directory), ``GET /`` (the browse page,
lightning_tt/browse.html), ``GET /api/users`` and ``GET /api/browse`` (what the page reads: BrowseView).

Reload opens the new export completely (every check of ``open_export``) before it replaces the served
one; a request holds the Recommender it arrived under, so requests in flight finish on the old one, and
a broken export is refused while the old one keeps serving.

Unknown ids (docs/serving.md): an unknown ``seed_item`` is a 404 (the model has no features for it); an
unknown ``user_id`` with a known seed is served from the seed and the unknown-user embedding, as a new
listener would be (``"fallback": "unknown_user"``); an unknown user with no seed is a 404.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lightning_tt.data.prepared import FIRST_ITEM, UNKNOWN
from lightning_tt.data.schema import EVENT_TYPES
from lightning_tt.errors import InputError, one_line
from lightning_tt.serve import LAST_LISTEN, Recommender

#: The page, served at / (plain HTML and a little JavaScript; no build step).
PAGE = Path(__file__).with_name("browse.html")
#: Clients that may call POST /reload.
LOOPBACK = ("127.0.0.1", "::1")
#: Events of a user's history that the browse page lists, newest first.
BROWSE_HISTORY = 30
#: Largest raw id a request may carry (int64; Yambda's ids are uint32).
MAX_ID = 2**63 - 1


class RecommendRequest(BaseModel):
    """The body of POST /recommend. Strict: "5" is not an int, and an unknown field is an error."""

    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: int = Field(ge=0, le=MAX_ID)
    seed_item: int | None = Field(default=None, ge=0, le=MAX_ID)
    k: int = Field(default=100, ge=1)
    exclude_seen: bool | None = None


class ReloadRequest(BaseModel):
    """The body of POST /reload (optional): the export directory to serve instead."""

    model_config = ConfigDict(extra="forbid", strict=True)
    export: str | None = None


class RequestError(Exception):
    """A request the server refuses: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Pending:
    """One request waiting in the batcher: its Recommender (the one served when it arrived), vocabulary
    indices, k, whether its seen items are left out, and the future its (scores [k], rows [k]) go to."""

    served: Recommender
    user: int
    seed: int
    k: int
    exclude_seen: bool
    done: asyncio.Future = field(repr=False)


class RequestBatcher:
    """Searches the requests that arrive together as one batch.

    A single task takes the first waiting request, then every request that arrives within ``max_wait_ms``
    (up to ``max_batch_size``), and runs them through Recommender.top_k on one worker thread, so the
    event loop keeps reading requests while a batch is searched and a busy server batches by itself.
    Requests of different Recommenders (a reload in between) or different k are searched separately."""

    def __init__(self, max_batch_size: int = 64, max_wait_ms: float = 1.0):
        if max_batch_size < 1:
            raise InputError(f"--max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise InputError(f"--max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[Pending] | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning-tt-search")
        self.batches = self.requests = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.worker.shutdown(wait=True)

    async def submit(self, served: Recommender, user: int, seed: int, k: int, exclude_seen: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        done = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(served, user, seed, k, exclude_seen, done))
        return await done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            for group in _groups(batch):
                try:
                    scores, rows = await loop.run_in_executor(self.worker, _search_group, group)
                except Exception as err:  # noqa: BLE001  (a bug: the requests get a 500, the server keeps running)
                    for pending in group:
                        if not pending.done.done():
                            pending.done.set_exception(err)
                    continue
                self.batches += 1
                self.requests += len(group)
                for i, pending in enumerate(group):
                    if not pending.done.done():  # (a client that went away cancelled its future)
                        pending.done.set_result((scores[i, :pending.k], rows[i, :pending.k]))


def _groups(batch: list[Pending]) -> list[list[Pending]]:
    """The batch split by (Recommender, k), in arrival order of each group's first request."""
    groups: dict[tuple[int, int], list[Pending]] = {}
    for pending in batch:
        groups.setdefault((id(pending.served), pending.k), []).append(pending)
    return list(groups.values())


def _search_group(group: list[Pending]) -> tuple[np.ndarray, np.ndarray]:
    served = group[0].served
    return served.top_k(np.array([p.user for p in group]), np.array([p.seed for p in group]), group[0].k,
                        exclude_seen=np.array([p.exclude_seen for p in group]))


def _listed(served: Recommender, scores: np.ndarray, rows: np.ndarray, hits: set[int] | None = None) -> list[dict]:
    """[{"item_id", "score", "artist_id", "album_id"(, "hit")}] of one list of index rows (-1: none); an
    item with no artist or album in the data has null there."""
    found = rows >= 0
    rows, scores = rows[found], scores[found]
    columns = (served.raw_items[rows].tolist(), np.round(scores.astype(np.float64), 6).tolist(),
               served.raw_artists[rows].tolist(), served.raw_albums[rows].tolist())  # Python ints and floats
    out = [{"item_id": i, "score": s, "artist_id": a if a >= 0 else None, "album_id": b if b >= 0 else None}
           for i, s, a, b in zip(*columns)]
    if hits is not None:
        for entry in out:
            entry["hit"] = entry["item_id"] in hits
    return out


def create_app(export: str | Path, max_batch_size: int = 64, max_wait_ms: float = 1.0):
    """The FastAPI application serving ``export`` (opened here, so a broken export fails before any
    socket is bound). Its ``state.served`` is the Recommender now served."""
    batcher = RequestBatcher(max_batch_size, max_wait_ms)
    first = Recommender(export)
    reload_lock = threading.Lock()

    def reload(directory: str | Path | None) -> Recommender:
        """Open ``directory`` (default: the served one) and serve it; the old export keeps serving when
        it cannot be opened (RequestError 409)."""
        with reload_lock:
            target = Path(directory) if directory is not None else app.state.served.index_dir
            try:
                fresh = Recommender(target)
            except InputError as err:
                raise RequestError(409, f"reload refused, still serving {app.state.served.index_dir}: "
                                        f"{one_line(err)}") from err
            app.state.served, app.state.browse = fresh, BrowseView(fresh)
            app.state.generation += 1
            app.state.loaded_at = time.time()
            return fresh

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        loop = asyncio.get_running_loop()
        try:  # SIGHUP: reload the served directory (only where the server runs in the main thread)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_quietly))
        except (ValueError, RuntimeError, NotImplementedError):
            pass
        yield
        try:
            loop.remove_signal_handler(signal.SIGHUP)
        except (ValueError, RuntimeError, NotImplementedError):
            pass
        await batcher.stop()

    def _reload_quietly() -> None:
        try:
            fresh = reload(None)
            print(f"lightning-tt serve: SIGHUP: now serving {fresh.index_dir} ({fresh.items:,} items)", flush=True)
        except RequestError as err:
            print(f"lightning-tt serve: SIGHUP: {err}", flush=True)

    app = FastAPI(title="lightning-tt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.browse = first, BrowseView(first)
    app.state.generation, app.state.loaded_at = 0, time.time()
    page_html = PAGE.read_text()
    app.state.batcher = batcher

    def reply(body: dict, status: int = 200) -> Response:
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        return reply({"error": str(err)}, err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return reply({"error": _validation_message(err.errors())}, 400 if _malformed(err.errors()) else 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):  # 404 route, 405 method
        return reply({"error": f"{request.method} {request.url.path}: {err.detail}"}, err.status_code)

    @app.post("/recommend")
    async def recommend(body: RecommendRequest):
        served: Recommender = app.state.served
        if body.k > served.items:
            raise RequestError(422, f"k: {body.k} is larger than the catalogue of {served.items:,} items")
        user = int(served.user_indices([body.user_id])[0])
        seed = LAST_LISTEN if body.seed_item is None else int(served.item_indices([body.seed_item])[0])
        if seed == UNKNOWN:
            raise RequestError(404, f"seed_item: {body.seed_item} is not in the model's catalogue; leave seed_item "
                                    f"out to seed from the user's last listen")
        if user == UNKNOWN and seed == LAST_LISTEN:
            raise RequestError(404, f"user_id: {body.user_id} is not a known user, and no seed_item was given to "
                                    f"rank from")
        exclude = served.exclude_seen if body.exclude_seen is None else body.exclude_seen
        scores, rows = await batcher.submit(served, user, seed, body.k, exclude)
        return reply({"user_id": body.user_id, "seed_item": body.seed_item,
                      "seeded_by": "request" if body.seed_item is not None else "last_listen",
                      "fallback": "unknown_user" if user == UNKNOWN else None, "k": body.k, "exclude_seen": exclude,
                      "items": _listed(served, scores, rows),
                      "index": {"export": str(served.index_dir), "factory": served.meta["factory"],
                                "nprobe": served.meta["nprobe"], "k_factor": served.meta["k_factor"],
                                "generation": app.state.generation}})

    @app.get("/health")
    async def health():
        served: Recommender = app.state.served
        return reply({"status": "ok", "items": served.items, "export": str(served.index_dir),
                      "generation": app.state.generation})

    @app.get("/info")
    async def info():
        served: Recommender = app.state.served
        meta = served.meta
        calibration = meta.get("calibration") or []
        return reply({"export": str(served.index_dir), "checkpoint": str(served.ckpt_path),
                      "data_dir": meta["data_dir"], "data_fingerprint": meta["data_fingerprint"],
                      "factory": meta["factory"], "items": served.items, "dim": meta["dim"],
                      "index_bytes": meta["index_bytes"], "nprobe": meta["nprobe"], "k_factor": meta["k_factor"],
                      "target_overlap": meta.get("target_overlap"),
                      "calibrated_overlap": calibration[-1][2] if calibration else None,
                      "exclude_seen": served.exclude_seen, "history": served.gather.history,
                      "max_batch_size": batcher.max_batch_size, "max_wait_ms": batcher.max_wait * 1000,
                      "generation": app.state.generation, "loaded_at": app.state.loaded_at,
                      "batches": batcher.batches, "requests": batcher.requests})

    @app.post("/reload")
    async def reload_route(request: Request):
        if request.client is None or request.client.host not in LOOPBACK:
            raise RequestError(403, "reload is only taken from the server's own machine (127.0.0.1)")
        raw = await request.body()
        try:
            body = ReloadRequest.model_validate_json(raw) if raw.strip() else ReloadRequest()
        except ValueError as err:
            errors = getattr(err, "errors", lambda: [])()
            raise RequestError(400 if _malformed(errors) else 422, _validation_message(errors) if errors
                               else one_line(err)) from err
        fresh = await asyncio.get_running_loop().run_in_executor(None, reload, body.export)
        return reply({"serving": str(fresh.index_dir), "items": fresh.items, "generation": app.state.generation})

    @app.get("/")
    async def page():
        return HTMLResponse(page_html)

    @app.get("/api/users")
    async def users(prefix: str = "", limit: int = Query(default=20, ge=1, le=200)):
        return reply({"users": app.state.browse.users(prefix, limit)})

    @app.get("/api/browse")
    async def browse(user_id: int = Query(ge=0, le=MAX_ID), k: int = Query(default=20, ge=1, le=1000),
                     exact: bool = False):
        view: BrowseView = app.state.browse
        served = view.served
        if k > served.items:
            raise RequestError(422, f"k: {k} is larger than the catalogue of {served.items:,} items")
        user = int(served.user_indices([user_id])[0])
        if user == UNKNOWN:
            raise RequestError(404, f"user_id: {user_id} is not a known user")
        shown = await asyncio.get_running_loop().run_in_executor(batcher.worker, view.view, user, k, exact)
        return reply({"user_id": user_id, **shown})

    return app


def _malformed(errors) -> bool:
    """Whether the validation errors say the body is not JSON at all (a 400, not a 422)."""
    return any(e.get("type") == "json_invalid" for e in errors)


def _validation_message(errors) -> str:
    """One line naming the first invalid field of pydantic's errors."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    name = ".".join(where) or "request body"
    if first.get("type") == "json_invalid":
        return f"request body: malformed JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
    if first.get("type") == "extra_forbidden":
        return f"{name}: unknown field (POST /recommend takes user_id, seed_item, k, exclude_seen)"
    return f"{name}: {first.get('msg', 'invalid')}"


class BrowseView:
    """What the browse page reads of one served export, each table built on first use: the users with
    their raw ids as text (for the search box), and the paper-protocol test cases."""

    def __init__(self, served: Recommender):
        self.served = served

    @functools.cached_property
    def user_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw ids [U], the same as text [U], whether each has a test-window case [U]) of the known users."""
        data = self.served.data
        raw = np.asarray(data["user_ids"], dtype=np.int64)[FIRST_ITEM:]
        with_case = np.zeros(len(raw), dtype=bool)
        with_case[np.asarray(data["paper_test_user"], dtype=np.int64) - FIRST_ITEM] = True
        return raw, raw.astype(str), with_case

    @functools.cached_property
    def test_cases(self):
        """The paper-protocol test cases (one per user: the state at the test window's start, the user's
        Listen+ of the window as targets), with evaluation's features (PaperListDataset)."""
        from lightning_tt.data.batches import PaperListDataset

        served = self.served
        return PaperListDataset(served.data, "test", served.gather.history, feedback=served.model.hparams.feedback,
                                exclude_seen=served.exclude_seen)

    def users(self, prefix: str, limit: int) -> list[dict]:
        """Up to ``limit`` users whose raw id starts with ``prefix``, those with a test-window case
        first: [{"user_id", "test_case"}]."""
        raw, text, with_case = self.user_table
        match = np.char.startswith(text, prefix) if prefix else np.ones(len(raw), dtype=bool)
        chosen = np.flatnonzero(match & with_case)[:limit]
        if len(chosen) < limit:
            chosen = np.concatenate([chosen, np.flatnonzero(match & ~with_case)[: limit - len(chosen)]])
        return [{"user_id": int(raw[i]), "test_case": bool(with_case[i])} for i in chosen]

    def view(self, user: int, k: int, exact: bool) -> dict:
        """What the page shows for user index ``user``.

        With a test-window case: the user as of the test window's start (history before it, the query
        of that state, evaluation's features), with their Listen+ of the window marked as hits.
        Without: the user now (the query of POST /recommend, seeded by the last listen), no marks."""
        from lightning_tt.data.batches import to_tensors

        served, data = self.served, self.served.data
        cases = np.asarray(data["paper_test_user"], dtype=np.int64)
        row = int(np.searchsorted(cases, user))
        searched = ("ann", False), ("exact", True)
        lists: dict[str, list] = {}
        if row < len(cases) and cases[row] == user:
            arrays = self.test_cases.arrays(np.array([row]))
            targets = arrays.pop("target_items")[0][: int(arrays.pop("target_count")[0])]
            hits = {int(i) for i in np.asarray(data["item_ids"], dtype=np.int64)[targets]}
            batch = to_tensors(arrays)
            for name, flag in searched:
                if name == "ann" or exact:
                    scores, rows = served.search(batch, k, exact=flag)
                    lists[name] = _listed(served, scores[0], rows[0], hits)
            cut, until = int(data["paper_test_pos"][row]), int(data.boundaries["test_start"])
            shown = {"mode": "test_window", "as_of": until, "targets": sorted(hits)}
        else:
            for name, flag in searched:
                if name == "ann" or exact:
                    scores, rows = served.top_k(np.array([user]), np.array([LAST_LISTEN]), k, exact=flag)
                    lists[name] = _listed(served, scores[0], rows[0])
            cut, until = int(np.asarray(data["user_offsets"])[user + 1]), None
            shown = {"mode": "now", "as_of": None, "targets": []}
        return {**shown, "history": self.history(user, cut, until), **lists}

    def history(self, user: int, cut: int, until: int | None) -> list[dict]:
        """The user's last BROWSE_HISTORY events before stream position ``cut`` (and, for the signals,
        before time ``until``; None: all), newest first: item, artist, album, event type, play ratio, time."""
        served, data = self.served, self.served.data
        start = int(np.asarray(data["user_offsets"])[user])
        first = max(start, cut - BROWSE_HISTORY)
        listens = [(int(data["stream_ts"][p]), int(data["stream_item"][p]), "listen", int(data["stream_ratio"][p]))
                   for p in range(first, cut)]
        signals = []
        for p in np.flatnonzero(np.asarray(data["signal_user"]) == user):
            ts = int(data["signal_ts"][p])
            if until is None or ts < until:
                signals.append((ts, int(data["signal_item"][p]), EVENT_TYPES[int(data["signal_type"][p])], None))
        events = sorted(listens + signals, key=lambda e: e[0], reverse=True)[:BROWSE_HISTORY]

        def raw(table: np.ndarray, index: int) -> int | None:  # an index row's raw id; None: unknown item, or none
            value = int(table[index - FIRST_ITEM]) if index >= FIRST_ITEM else -1
            return value if value >= 0 else None

        return [{"timestamp": ts, "item_id": raw(served.raw_items, i), "artist_id": raw(served.raw_artists, i),
                 "album_id": raw(served.raw_albums, i), "event_type": kind, "played_ratio_pct": ratio}
                for ts, i, kind, ratio in events]


def serve(export: Path, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 64,
          max_wait_ms: float = 1.0, open_page: bool = False) -> None:
    """Open ``export`` and serve it until interrupted (Ctrl-C or SIGTERM); see the module docstring."""
    import socket

    import uvicorn

    if not 0 <= port <= 65535:
        raise InputError(f"--port must be 0..65535, got {port}")
    app = create_app(export, max_batch_size, max_wait_ms)
    try:  # bound here, so a taken port or a foreign address is one line, and port 0 picks a free one
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without, a keep-alive client's every answer waited ~40 ms for
        # the delayed ACK of its headers (Nagle), measured in bench/bench_serve.py.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as err:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({one_line(err)})") from err
    port = sock.getsockname()[1]
    served = app.state.served
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    print(f"serving {served.index_dir} ({served.items:,} items, {served.meta['factory']}) on {url} "
          f"(browse page {url}, POST {url}recommend; Ctrl-C stops)", flush=True)
    if open_page:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
