"""The labelling console: its decisions (login, binding, box checks, who saves an example), its
HTTP API's refusals, and a person correcting boxes in a real Chromium, with a real broker, cloud
manager and dataset node beneath, so that what they accept lands in the Dataset's index."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.cookiejar
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_cloud import agent_config
from running_cloud import cloud
from test_cloud_daemon import DATASET, JOB, NODE, NS, setup_job, wait_for
from test_cloud_hardex import fill_inbox_through_an_agent
from test_live_view import CHROMIUM, CHROMIUM_ARGS

from console import fleet, review
from console.app import ConsoleSettings
from console.auth import (
    PasswordFileError,
    TokenFile,
    TokenFileError,
    Users,
    bind_problem,
    hash_password,
    issue_token,
    read_password_file,
    read_token_file,
    revoke_token,
    set_password,
    verify_password,
)
from console.server import Listen, running
from console.state import ConsoleState
from cloud_manager.versions import ModelVersion
from edge_agent.daemon import Agent
from edge_agent.label_intake import LABELLED_FOLDER
from edgeloop.connection import ConnectionOptions
from edgeloop.ports import free_port
from protocol.dataset_index import read_index

DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"
#: Set to regenerate the screenshots in docs/console/ from the browser test.
SCREENSHOTS = os.environ.get("EDGELOOP_CONSOLE_SCREENSHOTS") == "1"
USER, PASSWORD = "ana", "correct horse battery"
CLASSES = ["person", "helmet", "helmet-on", "helmet-off"]


# --- decisions, without a server ---------------------------------------------------------------


def test_passwords_are_stored_hashed_and_checked(tmp_path):
    stored = hash_password("s3cret-enough")
    assert "s3cret" not in stored and stored.startswith("scrypt$")
    assert verify_password(stored, "s3cret-enough")
    assert not verify_password(stored, "s3cret-enougH")
    assert not verify_password("scrypt$garbage", "s3cret-enough")

    path = tmp_path / "console.passwd"
    assert set_password(path, USER, PASSWORD) is True
    assert set_password(path, USER, PASSWORD + "!") is False  # changed, not added twice
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    users = Users(read_password_file(path))
    assert users.check(USER, PASSWORD + "!") and not users.check(USER, PASSWORD)
    assert not users.check("nobody", PASSWORD)
    with pytest.raises(ValueError, match="at least 8"):
        set_password(path, "bob", "short")
    with pytest.raises(ValueError, match="letters, digits"):
        set_password(path, "bob:x", PASSWORD)
    path.write_text(path.read_text() + "bob plain-text-password\n")
    with pytest.raises(PasswordFileError, match=r"console.passwd:2: expected user:scrypt"):
        read_password_file(path)
    with pytest.raises(PasswordFileError, match="no such password file"):
        read_password_file(tmp_path / "missing")


def test_the_console_listens_beyond_loopback_only_with_tls_or_when_told():
    assert bind_problem("127.0.0.1", tls=False, insecure_bind=False) is None
    assert bind_problem("::1", tls=False, insecure_bind=False) is None
    assert bind_problem("localhost", tls=False, insecure_bind=False) is None
    problem = bind_problem("0.0.0.0", tls=False, insecure_bind=False)
    assert problem and "--tls-cert and --tls-key, or --insecure-bind" in problem
    assert bind_problem("0.0.0.0", tls=True, insecure_bind=False) is None
    assert bind_problem("192.0.2.4", tls=False, insecure_bind=True) is None
    with pytest.raises(ValueError, match="go together"):
        Listen("0.0.0.0", tls_cert=Path("cert.pem")).check()


def accept(boxes: list[dict], no_objects: bool = False) -> review.AcceptRequest:
    return review.AcceptRequest(job="ns/job", id="a" * 64, boxes=boxes, no_objects=no_objects)


def test_boxes_are_checked_against_the_image_and_the_job_classes():
    good = accept([{"x1": 1.4, "y1": 2, "x2": 30, "y2": 40.6, "cls": 2}])
    assert review.checked_boxes(good, 64, 48, CLASSES) == [[1, 2, 30, 41, 2]]
    bad = accept([{"x1": 1, "y1": 2, "x2": 65, "y2": 40, "cls": 0},
                  {"x1": 5, "y1": 5, "x2": 5, "y2": 9, "cls": 0},
                  {"x1": 1, "y1": 1, "x2": 9, "y2": 9, "cls": 7},
                  {"x1": 1, "y1": 1, "x2": 9, "y2": 9, "cls": 1}])
    with pytest.raises(review.BoxProblems) as caught:
        review.checked_boxes(bad, 64, 48, CLASSES)
    assert caught.value.problems == [
        "box 1: x2 (65) is outside the image width 64",
        "box 2: no area (5,5 to 5,9): drag it larger or delete it",
        "box 3: class 7 is not one of the job's classes (0 person, 1 helmet, 2 helmet-on, "
        "3 helmet-off)",
    ]
    with pytest.raises(review.BoxProblems, match="mark the image as having no objects"):
        review.checked_boxes(accept([]), 64, 48, CLASSES)
    assert review.checked_boxes(accept([], no_objects=True), 64, 48, CLASSES) == []


def test_the_first_accept_wins_and_skips_go_to_the_end_of_ones_own_queue():
    ledger = review.Ledger()
    assert ledger.begin_save("x", "ana") is None
    assert ledger.begin_save("x", "ben") == "ana is saving it right now"
    ledger.end_save("x", saved=True)
    assert ledger.begin_save("x", "ben") == "already saved by ana"
    assert ledger.begin_save("y", "ben") is None
    ledger.end_save("y", saved=False)  # the cloud refused: free again
    assert ledger.begin_save("y", "ana") is None

    day = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC).timestamp()
    items = [{"id": f"e{i}", "node": "edge0" if i < 3 else "edge1", "mining": "IBT",
              "time": day + i * 86400, "sidecar": {"source": f"rtsp://cam{i % 2}"}}
             for i in range(5)]
    ledger = review.Ledger()
    ledger.skip("e0", "ana")
    ledger.mark_difficult("e1", "ana", True)
    everything = review.QueueFilter()
    assert [i["id"] for i in review.queue(items, ledger, everything, "ana")] == \
        ["e2", "e3", "e4", "e0"]
    assert [i["id"] for i in review.queue(items, ledger, everything, "ben")] == \
        ["e0", "e2", "e3", "e4"]
    only = review.QueueFilter(node="edge0", camera="rtsp://cam0")
    assert [i["id"] for i in review.queue(items, ledger, only, "ben")] == ["e0", "e2"]
    dates = review.QueueFilter(since=dt.date(2026, 12, 3), until=dt.date(2026, 12, 4))
    assert [i["id"] for i in review.queue(items, ledger, dates, "ben")] == ["e2", "e3"]
    flagged = review.QueueFilter(show="difficult")
    assert [i["id"] for i in review.queue(items, ledger, flagged, "ben")] == ["e1"]
    assert review.choices(items)["cameras"] == ["rtsp://cam0", "rtsp://cam1"]


def test_skips_flags_and_the_session_key_outlive_a_restart(tmp_path):
    state = ConsoleState(tmp_path)
    key = state.secret()
    state.record_skip("e0", "ana")
    state.record_skip("e2", "ana")
    state.record_skip("e0", "ana")  # skipped again: last again
    state.record_difficult("e1", "ben", True)
    state.record_difficult("e3", "ben", True)
    state.record_difficult("e3", "ben", False)
    state.close()
    assert oct((tmp_path / "console.sqlite").stat().st_mode & 0o777) == "0o600"

    again = ConsoleState(tmp_path)
    assert again.secret() == key
    ledger = again.ledger()
    assert ledger.skipped == {"ana": ["e2", "e0"]}
    assert ledger.difficult == {"e1": "ben"}
    assert again.rotate_secret() != key and again.secret() != key
    again.close()
    (tmp_path / "console.sqlite").unlink()  # deleting the file also makes a new key
    fresh = ConsoleState(tmp_path)
    assert fresh.secret() != key and fresh.ledger().skipped == {}
    fresh.close()


def test_the_fleet_view_shows_fields_the_cloud_adds_without_knowing_them():
    nodes = [{"name": "edge1", "state": "online", "updated": 5.0, "labels": {"site": "n"},
              "agent_version": "0.3", "outbox_backlog": 0,
              "cameras": {"gate": {"serving": 3, "fps": 9.5}},
              "live_view_url": "http://10.0.0.5:8080/", "disk_free": "2 GB"},
             {"name": "edge0", "state": "offline", "live_view": "javascript:alert(1)"}]
    targets = {"ns/job": [{"node": "edge1", "desired": 3, "serving": 2, "health": "online",
                           "rollout_stage": "canary"},
                          {"node": "edge7", "desired": 3, "serving": None}]}
    rows = {row.name: row for row in fleet.fleet(nodes, targets)}
    assert list(rows) == ["edge0", "edge1", "edge7"]
    edge1 = rows["edge1"]
    assert edge1.live_view == "http://10.0.0.5:8080/" and rows["edge0"].live_view is None
    assert edge1.cameras == {"gate": {"serving": 3, "fps": 9.5}}
    assert edge1.extra == {"disk_free": "2 GB"}
    assert [(j.job, j.desired, j.serving, j.extra) for j in edge1.jobs] == \
        [("ns/job", 3, 2, {"rollout_stage": "canary"})]
    assert rows["edge7"].state == "never seen"
    summary = fleet.job_summary("ns/job", {"status": {"stage": "Deploy", "rollout": "50%"},
                                           "rollout_nodes": ["edge1"]})
    assert summary["rollout"] == {"rollout": "50%", "rollout_nodes": ["edge1"]}


def test_tokens_are_stored_hashed_replaced_and_revoked(tmp_path):
    path = tmp_path / "console.tokens"
    tokens = TokenFile(path)  # no file yet: no tokens, not an error
    assert tokens.user_of("anything") is None
    first = issue_token(path, "cam")
    assert first not in path.read_text() and oct(path.stat().st_mode & 0o777) == "0o600"
    user, fingerprint = tokens.user_of(first) or ("", "")
    assert user == "cam" and tokens.holds("cam", fingerprint)
    second = issue_token(path, "cam")  # a new token replaces the old one
    assert tokens.user_of(first) is None and not tokens.holds("cam", fingerprint)
    assert tokens.user_of(second) is not None
    issue_token(path, "dee")
    assert revoke_token(path, "cam") and not revoke_token(path, "cam")
    assert tokens.user_of(second) is None and list(read_token_file(path)) == ["dee"]
    with pytest.raises(ValueError, match="letters, digits"):
        issue_token(path, "a:b")
    path.write_text(path.read_text() + "eve:plain-token\n")
    with pytest.raises(TokenFileError, match=r"console.tokens:2: expected user:sha256\$"):
        TokenFile(path)


# --- a running console over a real broker, cloud manager and dataset node ---------------------


@dataclass
class Loop:
    url: str  # the console's
    data: Path  # the Dataset's index
    daemon: object
    ids: list[str]
    clock: list[float]
    broker_url: str
    tmp: Path
    settings: ConsoleSettings
    tokens: TokenFile | None = None


USERS = Users({USER: hash_password(PASSWORD), "ben": hash_password(PASSWORD)})


@asynccontextmanager
async def another_console(loop: Loop) -> AsyncIterator[str]:
    """A console started afresh on the loop's state folder (as after a restart): its URL."""
    listen = Listen(port=free_port())
    async with running(ConnectionOptions(broker=loop.broker_url), USERS, listen,
                       loop.tmp / "console-cache", loop.tmp / "console-state", loop.settings,
                       loop.tokens):
        yield listen.url


@asynccontextmanager
async def console_over_a_loop(broker_url: str, tmp: Path,
                              tokens: TokenFile | None = None) -> AsyncIterator[Loop]:
    """The cloud manager with a job and three hard examples from a real agent, the dataset's
    node online, and the console logged into the cloud's API."""
    clock = [1_000_000.0]
    settings = ConsoleSettings(session_s=3600, poll_s=0.2, default_job=f"{NS}/{JOB}",
                               clock=lambda: clock[0])
    async with hard_examples_and_a_dataset_node(broker_url, tmp) as (daemon, ids, data):
        loop = Loop("", data, daemon, ids, clock, broker_url, tmp, settings, tokens)
        async with another_console(loop) as url:
            loop.url = url
            yield loop


@asynccontextmanager
async def hard_examples_and_a_dataset_node(broker_url: str,
                                           tmp: Path) -> AsyncIterator[tuple[Any, list[str], Path]]:
    """The cloud manager with a job and three hard examples from a real agent, and the dataset's
    node online: (the cloud daemon, the examples' ids, the Dataset's index)."""
    data = tmp / "data" / "data.txt"
    data.parent.mkdir()
    data.touch()
    async with cloud(broker_url, tmp / "state") as daemon:
        await setup_job(broker_url, tmp)
        ids = await fill_inbox_through_an_agent(broker_url, tmp, daemon)
        config = agent_config(broker_url, tmp / "node", node=NODE, datasets={DATASET: data})
        async with Agent(config):
            await wait_for(lambda: NODE in daemon.manager.online_nodes())
            yield daemon, ids, data


def sample_count(daemon) -> int | None:
    return getattr(daemon.manager.store.dataset_samples(NS, "incremental-dataset"), "samples",
                   None)


class Visitor:
    """A browser-less client with its own cookies (its own session)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def call(self, path: str, body: dict | None = None, *, csrf: str | None = None,
             origin: str | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if body is not None:
            headers["X-CSRF-Token"] = self.csrf if csrf is None else csrf
        if origin:
            headers["Origin"] = origin
        request = urllib.request.Request(
            self.base + path, data=None if body is None else json.dumps(body).encode(),
            headers=headers, method="GET" if body is None else "POST")
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def login(self, user: str = USER, password: str = PASSWORD) -> tuple[int, dict]:
        status, data = self.call("/api/login", {"user": user, "password": password})
        self.csrf = data.get("csrf", "")
        return status, data


@pytest.mark.broker
@pytest.mark.timeout(180)
async def test_the_api_refuses_what_must_not_change_the_data(broker, tmp_path):
    async with console_over_a_loop(broker.url, tmp_path) as loop:
        job = f"{NS}/{JOB}"
        ana, ben = Visitor(loop.url), Visitor(loop.url)

        def ask(visitor: Visitor, *args, **kwargs):
            return asyncio.to_thread(visitor.call, *args, **kwargs)

        assert (await ask(ana, f"/api/queue?job={job}")) == \
            (401, {"error": "not logged in: log in first", "problems": []})
        assert (await asyncio.to_thread(ana.login, USER, "wrong")) == \
            (401, {"error": "wrong user name or password", "problems": []})
        assert (await asyncio.to_thread(ana.login))[0] == 200
        assert (await asyncio.to_thread(ben.login, "ben"))[0] == 200

        status, listing = await ask(ana, f"/api/queue?job={job}")
        assert status == 200, listing
        assert sorted(i["id"] for i in listing["items"]) == sorted(loop.ids)
        assert listing["class_names"] == CLASSES
        first = loop.ids[0]
        box = {"x1": 2, "y1": 4, "x2": 30, "y2": 39, "cls": 1}

        # cross-site: no token, a wrong token, another site's page
        status, answer = await ask(ana, "/api/accept", {"job": job, "id": first, "boxes": [box]},
                                   csrf="")
        assert (status, answer["error"]) == (
            403, "missing or wrong request token (X-CSRF-Token): reload the page")
        status, answer = await ask(ana, "/api/accept", {"job": job, "id": first, "boxes": [box]},
                                   origin="http://evil.example")
        assert (status, answer["error"]) == (403, "request from another site "
                                                  "(http://evil.example) refused")
        # a malformed box: named, nothing written
        status, answer = await ask(ana, "/api/accept", {"job": job, "id": first,
                                                        "boxes": [box | {"x2": 500}]})
        assert status == 400 and answer["error"] == \
            "nothing saved: box 1: x2 (500) is outside the image width 64", answer
        status, answer = await ask(ana, "/api/accept", {"job": job, "id": first,
                                                        "boxes": [{"x1": 1}]})
        assert status == 400 and answer["error"].startswith("bad request: boxes.0"), answer
        assert loop.data.read_text() == ""

        # two people accept the same example at once: one saves it, the other is told
        both = await asyncio.gather(
            ask(ana, "/api/accept", {"job": job, "id": first, "boxes": [box]}),
            ask(ben, "/api/accept", {"job": job, "id": first, "boxes": [box]}))
        assert sorted(status for status, _ in both) == [200, 409], both
        refused = next(answer for status, answer in both if status == 409)
        assert first[:12] in refused["error"] and "nothing" in refused["error"], refused
        await wait_for(lambda: sample_count(loop.daemon) == 1, what="the sample counted")
        assert len(loop.data.read_text().splitlines()) == 1

        # an expired session can change nothing
        loop.clock[0] += 3601
        status, answer = await ask(ana, "/api/accept", {"job": job, "id": loop.ids[1],
                                                        "boxes": [box]})
        assert (status, answer["error"]) == (401, "your session expired: log in again")
        status, stats = await asyncio.to_thread(ben.login, "ben")
        status, stats = await ask(ben, "/api/stats")
        assert stats["refused"]["401"] >= 3 and stats["refused"]["403"] == 2, stats
    assert len(loop.data.read_text().splitlines()) == 1


async def drag(page, scale: float, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at image pixel ``start``, move to ``end``, release (as a hand would, in steps)."""
    box = await page.locator("#canvas").bounding_box()
    x0, y0 = box["x"], box["y"]
    await page.mouse.move(x0 + start[0] * scale, y0 + start[1] * scale)
    await page.mouse.down()
    await page.mouse.move(x0 + end[0] * scale, y0 + end[1] * scale, steps=5)
    await page.mouse.up()


async def shown_boxes(page) -> list[list[int]]:
    rows = await page.eval_on_selector_all("#boxes tbody tr", "rs => rs.map(r => r.dataset.box)")
    return [[int(v) for v in row.split(",")] for row in rows]


@pytest.mark.broker
@pytest.mark.timeout(240)
@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="Debian's chromium is not installed (/usr/bin/chromium)")
async def test_a_person_corrects_three_examples_in_the_browser(broker, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api")
    async with console_over_a_loop(broker.url, tmp_path) as loop, \
            playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(loop.url + "/queue")
            await page.wait_for_url("**/login**")  # not logged in: sent to the login page
            await page.fill("#user", USER)
            await page.fill("#password", "not the password")
            await page.click("button[type=submit]")
            await page.wait_for_function(
                "document.querySelector('#message').textContent.includes('wrong')")
            if SCREENSHOTS:
                await page.screenshot(path=str(DOCS / "login.png"))
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_selector("body[data-ready='1']")

            saved: dict[str, list[list[int]]] = {}
            for n in range(3):
                example = await page.wait_for_function(
                    "previous => { const c = document.querySelector('#canvas');"
                    " return c.dataset.id && c.dataset.id !== previous"
                    " && document.querySelectorAll('#boxes tbody tr').length"
                    " ? c.dataset.id : false; }", arg=next(reversed(saved), ""))
                example_id = await example.json_value()
                scale = float(await page.get_attribute("#canvas", "data-scale"))
                boxes = await shown_boxes(page)
                # the model's proposals: a helmet-on box, and one clipped to the frame; its
                # third box has a class the job does not know and is not proposed
                assert boxes[0] == [2, 4, 20, 30, 2], boxes
                assert len(boxes) == 2 and boxes[1][:2] == [10, 10] and boxes[1][4] == 3
                width, height = boxes[1][2], boxes[1][3]
                if n == 0 and SCREENSHOTS:
                    await page.screenshot(path=str(DOCS / "queue.png"))
                await drag(page, scale, (20, 30), (30, 39))  # the bottom-right corner
                await page.keyboard.press("2")  # the selected box becomes class 1 (helmet)
                middle = ((10 + width) / 2 + 3, (10 + height) / 2)
                await drag(page, scale, middle, middle)  # select the false box...
                await page.keyboard.press("Delete")  # ...and delete it
                assert await shown_boxes(page) == [[2, 4, 30, 39, 1]]
                await page.keyboard.press("a")
                await page.wait_for_function(
                    f"document.querySelector('#message').textContent.includes("
                    f"'saved {example_id[:12]}')")
                saved[example_id] = [[2, 4, 30, 39, 1]]
            await page.wait_for_function(
                "document.querySelector('#title').textContent.includes('Nothing to label')")
            assert sorted(saved) == sorted(loop.ids)

            await page.goto(f"{loop.url}/jobs?job={NS}/{JOB}")
            await page.wait_for_function(
                f"document.querySelector('[data-job=\"{NS}/{JOB}\"] .stage')?.textContent")
        finally:
            await browser.close()
        await wait_for(lambda: sample_count(loop.daemon) == 3, what="three samples counted")

    lines = loop.data.read_text().splitlines()
    assert len(lines) == 3
    index = read_index(loop.data)
    assert not index.problems
    assert {s.image.parent.name for s in index.samples} == {LABELLED_FOLDER}
    assert {s.image.stem: s.boxes.tolist() for s in index.samples} == saved


@pytest.mark.broker
@pytest.mark.timeout(180)
async def test_a_restart_keeps_sessions_skips_and_flags_and_a_token_logs_in(broker, tmp_path):
    token_path = tmp_path / "console.tokens"
    token = issue_token(token_path, "cam")
    async with console_over_a_loop(broker.url, tmp_path, TokenFile(token_path)) as loop:
        job = f"{NS}/{JOB}"
        ana, cam = Visitor(loop.url), Visitor(loop.url)

        def ask(visitor: Visitor, *args, **kwargs):
            return asyncio.to_thread(visitor.call, *args, **kwargs)

        async def queue_ids(visitor: Visitor, show: str = "todo") -> list[str]:
            status, listing = await ask(visitor, f"/api/queue?job={job}&show={show}")
            assert status == 200, listing
            return [item["id"] for item in listing["items"]]

        assert (await asyncio.to_thread(ana.login))[0] == 200
        first, second, third = await queue_ids(ana)
        assert (await ask(ana, "/api/skip", {"job": job, "id": first}))[0] == 200
        assert (await ask(ana, "/api/difficult", {"job": job, "id": second}))[0] == 200

        # a token logs in as its user, under the same request-token rules
        assert (await ask(cam, "/api/login", {"token": "not-a-token"})) == \
            (401, {"error": "unknown or revoked token", "problems": []})
        status, answer = await ask(cam, "/api/login", {"token": token})
        assert (status, answer["user"]) == (200, "cam"), answer
        cam.csrf = answer["csrf"]
        status, answer = await ask(cam, "/api/skip", {"job": job, "id": third}, csrf="")
        assert status == 403, answer

        async with another_console(loop) as url:  # the console restarts
            ana.base = cam.base = url
            assert await queue_ids(ana) == [third, first]  # still logged in, skip kept
            assert await queue_ids(ana, "difficult") == [second]
            assert await queue_ids(cam) == [first, third]  # ana's skip is hers only
            assert revoke_token(token_path, "cam")
            assert (await ask(cam, f"/api/queue?job={job}")) == \
                (401, {"error": "your token was revoked or replaced: log in again",
                       "problems": []})
            assert (await ask(cam, "/api/login", {"token": token}))[0] == 401

        state = ConsoleState(tmp_path / "console-state")
        state.rotate_secret()  # what `edgeloop console rotate-key` does
        state.close()
        async with another_console(loop) as url:
            ana.base = url
            assert (await ask(ana, f"/api/queue?job={job}")) == \
                (401, {"error": "not logged in: log in first", "problems": []})


def test_the_token_and_rotate_key_commands(tmp_path):
    from typer.testing import CliRunner

    from edgeloop.cli import app

    runner = CliRunner()
    path = tmp_path / "console.tokens"
    made = runner.invoke(app, ["console", "token", "cam", "--token-file", str(path)])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert TokenFile(path).user_of(token) == ("cam", read_token_file(path)["cam"])
    revoked = runner.invoke(app, ["console", "token", "cam", "--token-file", str(path),
                                  "--revoke"])
    assert revoked.exit_code == 0 and "revoked cam's token" in revoked.output
    assert TokenFile(path).user_of(token) is None

    state = ConsoleState(tmp_path)
    key = state.secret()
    state.close()
    rotated = runner.invoke(app, ["console", "rotate-key", "--state-dir", str(tmp_path)])
    assert rotated.exit_code == 0, rotated.output
    state = ConsoleState(tmp_path)
    assert state.secret() != key
    state.close()


async def log_in(page, url: str) -> None:
    await page.goto(url + "/login")
    await page.fill("#user", USER)
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready='1']")


async def cell_text(page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


@pytest.mark.broker
@pytest.mark.timeout(240)
@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="Debian's chromium is not installed (/usr/bin/chromium)")
async def test_the_fleet_page_follows_nodes_live_and_the_jobs_page_plots_versions(broker,
                                                                                  tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api")
    async with console_over_a_loop(broker.url, tmp_path) as loop, \
            playwright_api.async_playwright() as pw:
        store = loop.daemon.manager.store  # two registered versions, as two rounds leave them
        for version, f1 in ((1, 0.61), (2, 0.74)):
            store.add_model_version(f"{NS}/{JOB}", ModelVersion(
                version=version, round=version, artifacts=(), time=1_000_000.0 + version,
                metrics={"precision": f1 + 0.05, "recall": f1 - 0.04, "f1": f1,
                         "map50": f1 - 0.1, "map": f1 - 0.3},
                decision="deployed"), now=1_000_000.0)
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 700})
            await log_in(page, loop.url)
            await page.goto(loop.url + "/fleet")
            await page.wait_for_selector(f"[data-node='{NODE}'] td.state.online")
            # the agent reports where its live view listens: the page links to it
            link = page.locator(f"[data-node='{NODE}'] .live a")
            href = await link.get_attribute("href")
            assert href is not None and href.startswith("http://127.0.0.1:"), href
            live = await browser.new_page()
            try:
                await live.goto(href)
                assert await live.title() == "edgeloop live view"
            finally:
                await live.close()
            serving = await cell_text(page, f"[data-node='{NODE}'] .serving")
            assert serving.startswith(f"{NS}/{JOB}: "), serving
            assert await cell_text(page, f"#rollouts [data-job='{NS}/{JOB}'] .stage")

            # a node comes online while the page is open, then goes: the page follows
            extra = "edge9"
            config = agent_config(broker.url, tmp_path / "edge9", node=extra,
                                  labels={"site": "north"}, live_view_port=None)
            async with Agent(config):
                await page.wait_for_selector(f"[data-node='{extra}'] td.state.online")
                assert await cell_text(page, f"[data-node='{extra}'] .labels") == "site north"
                assert await cell_text(page, f"[data-node='{extra}'] .live") == "-"  # no page
                if SCREENSHOTS:
                    await page.screenshot(path=str(DOCS / "fleet.png"))
            await page.wait_for_selector(f"[data-node='{extra}'] td.state.offline")

            await page.goto(f"{loop.url}/jobs?job={NS}/{JOB}")
            await page.wait_for_selector("#metrics-plot polyline[data-metric='f1']")
            metrics = await page.eval_on_selector_all(
                "#metrics-plot polyline", "ls => ls.map(l => l.dataset.metric)")
            assert metrics == ["f1", "map", "map50", "precision", "recall"]
            assert await page.locator("#metrics-plot circle").count() == 10
            if SCREENSHOTS:
                await page.screenshot(path=str(DOCS / "jobs.png"), full_page=True)
        finally:
            await browser.close()
