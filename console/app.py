"""The console's web application: pages, a JSON API for them, and a websocket for live updates.

Starlette (an ASGI toolkit on the same asyncio loop as the MQTT session; no framework of its own
to learn) serves plain HTML and JavaScript from ``static/``: no build step. Every ``/api`` call
and the websocket need a logged-in session (a signed cookie, ``SameSite=Strict``); every
``POST`` also needs the session's token in ``X-CSRF-Token`` and, when the browser sends one, an
``Origin`` of the console itself, so another site's page cannot make a logged-in browser change
the training data.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from cloud_manager.hardex_export import proposals
from console import fleet, review
from console.auth import TokenFile, Users, new_token, tokens_match
from console.cloud import ApiFailed, CloudLink, JobRef
from console.state import ConsoleState
from edgeloop.mqtt import NotConnected, RequestTimeout
from protocol.codec import describe_validation_error

log = logging.getLogger("edgeloop.console")

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"/login": "login.html", "/jobs": "jobs.html", "/queue": "queue.html",
         "/fleet": "fleet.html"}
CSRF_HEADER = "x-csrf-token"
#: How often the console asks the cloud whether a job moved, to tell open pages.
DEFAULT_POLL_S = 2.0


class Refused(Exception):
    """A request the console turns down: ``status`` and a message the page shows as it is."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


class LoginRequest(BaseModel):
    """A user name and password, or a token from ``edgeloop console token``."""

    user: str = Field(default="", max_length=256)
    password: str = Field(default="", max_length=1024)
    token: str = Field(default="", max_length=256)


@dataclass
class ConsoleSettings:
    session_s: float = 8 * 3600.0
    poll_s: float = DEFAULT_POLL_S
    default_job: str = ""
    clock: Callable[[], float] = time.time


@dataclass
class Counters:
    """What the console refused, by reason: visible at ``/api/stats`` and in the log."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


class Hub:
    """The open pages' websockets; :meth:`tell` sends an event to all of them."""

    def __init__(self) -> None:
        self.sockets: set[WebSocket] = set()

    async def tell(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        for socket in list(self.sockets):
            try:
                await socket.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.sockets.discard(socket)


class Console:
    """The application's state and handlers; :attr:`app` is the ASGI app."""

    def __init__(self, cloud: CloudLink, users: Users, state: ConsoleState, *,
                 tokens: TokenFile | None = None, settings: ConsoleSettings | None = None,
                 https: bool = False) -> None:
        self.cloud = cloud
        self.users = users
        self.tokens = tokens
        self.state = state
        self.settings = settings or ConsoleSettings()
        self.ledger = state.ledger()
        self.hub = Hub()
        self.refused = Counters()
        routes = [
            Route("/", self.home),
            *(Route(path, self.page) for path in PAGES),
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/logout", self.logout, methods=["POST"]),
            Route("/api/me", self.me),
            Route("/api/jobs", self.jobs),
            Route("/api/job", self.job),
            Route("/api/fleet", self.fleet),
            Route("/api/queue", self.queue),
            Route("/api/example", self.example),
            Route("/api/image", self.image),
            Route("/api/accept", self.accept, methods=["POST"]),
            Route("/api/skip", self.skip, methods=["POST"]),
            Route("/api/difficult", self.difficult, methods=["POST"]),
            Route("/api/stats", self.stats),
            WebSocketRoute("/ws", self.websocket),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
        self.app = Starlette(
            routes=routes,
            middleware=[Middleware(SessionMiddleware, secret_key=state.secret(),
                                   session_cookie="edgeloop_console",
                                   max_age=int(self.settings.session_s), same_site="strict",
                                   https_only=https)],
            exception_handlers={Refused: self._refused},
            lifespan=self._lifespan,
        )

    # -- plumbing --

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        watcher = asyncio.create_task(self._watch_jobs(), name="console-watch")
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        self.refused.add(str(exc.status))
        user = request.session.get("user", "-") if "session" in request.scope else "-"
        log.info("refused %s %s for %s: %s %s", request.method, request.url.path, user,
                 exc.status, exc.message)
        return JSONResponse({"error": exc.message, "problems": exc.problems}, exc.status)

    def _user(self, connection: HTTPConnection) -> str:
        """The logged-in user, or 401; a session older than its lifetime is ended here too."""
        session = connection.session
        user, since = session.get("user"), session.get("since")
        if not user or not isinstance(since, int | float):
            raise Refused(401, "not logged in: log in first")
        if self.settings.clock() - since > self.settings.session_s:
            session.clear()
            raise Refused(401, "your session expired: log in again")
        token = session.get("token")
        if token is not None and (self.tokens is None
                                  or not self.tokens.holds(str(user), str(token))):
            session.clear()
            raise Refused(401, "your token was revoked or replaced: log in again")
        return str(user)

    def _same_origin(self, connection: HTTPConnection) -> None:
        origin = connection.headers.get("origin")
        host = connection.headers.get("host")
        if origin is not None and (host is None or urlsplit(origin).netloc.lower()
                                   != host.lower()):
            raise Refused(403, f"request from another site ({origin}) refused")

    def _changing(self, request: Request) -> str:
        """The user of a state-changing request, after the cross-site checks."""
        self._same_origin(request)
        user = self._user(request)
        if not tokens_match(request.session.get("csrf"), request.headers.get(CSRF_HEADER)):
            raise Refused(403, "missing or wrong request token (X-CSRF-Token): reload the page")
        return user

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        try:
            raw = await request.body()
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise Refused(400, f"bad request: {describe_validation_error(exc)}") from None

    @staticmethod
    def _job(text: str | None) -> JobRef:
        try:
            return JobRef.parse(text or "")
        except ValueError as exc:
            raise Refused(400, str(exc)) from None

    async def _ask(self, work: Awaitable[Any]) -> Any:
        """An answer from the cloud, or a refusal that says why there is none."""
        try:
            return await work
        except ApiFailed as exc:
            raise Refused(exc.response.code if 400 <= exc.response.code < 600 else 502,
                          exc.response.message, list(exc.response.errors)) from None
        except (NotConnected, RequestTimeout) as exc:
            raise Refused(503, f"the cloud manager cannot be reached: {exc}") from None
        except ValueError as exc:
            raise Refused(502, str(exc)) from None

    # -- pages and login --

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/queue" if request.session.get("user") else "/login", 303)

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / PAGES[request.url.path],
                            headers={"Cache-Control": "no-store"})

    async def login(self, request: Request) -> Response:
        self._same_origin(request)
        body = await self._body(request, LoginRequest)
        user, token = self._who(body, request)
        request.session.clear()
        request.session.update({"user": user, "since": self.settings.clock(),
                                "csrf": new_token()})
        if token is not None:  # checked again at every request: revoking ends the session
            request.session["token"] = token
        log.info("%s logged in%s", user, " with a token" if token else "")
        return JSONResponse({"user": user, "csrf": request.session["csrf"],
                             "default_job": self.settings.default_job})

    def _who(self, body: LoginRequest, request: Request) -> tuple[str, str | None]:
        """The user a login names and, for a token login, the token's fingerprint; 401 when
        the password or token is wrong (the same message whether the user exists or not)."""
        if body.token:
            found = self.tokens.user_of(body.token) if self.tokens is not None else None
            if found is not None:
                return found
            what, message = "token", "unknown or revoked token"
        elif body.user and self.users.check(body.user, body.password):
            return body.user, None
        else:
            what, message = repr(body.user[:64]), "wrong user name or password"
        self.refused.add("login")
        log.warning("failed login for %s from %s", what,
                    request.client.host if request.client else "?")
        raise Refused(401, message)

    async def logout(self, request: Request) -> Response:
        self._changing(request)
        request.session.clear()
        return JSONResponse({"ok": True})

    async def me(self, request: Request) -> Response:
        user = self._user(request)
        return JSONResponse({"user": user, "csrf": request.session.get("csrf"),
                             "default_job": self.settings.default_job})

    async def stats(self, request: Request) -> Response:
        self._user(request)
        return JSONResponse({"refused": self.refused.counts, "saved": len(self.ledger.saved),
                             "pages_open": len(self.hub.sockets)})

    # -- jobs --

    async def jobs(self, request: Request) -> Response:
        self._user(request)
        return JSONResponse({"items": await self._ask(self.cloud.jobs())})

    async def job(self, request: Request) -> Response:
        self._user(request)
        job = self._job(request.query_params.get("job"))
        return JSONResponse(await self._ask(self.cloud.describe(job)))

    async def fleet(self, request: Request) -> Response:
        """Every node with each job's version on it, and each job's rollout as the cloud
        describes it."""
        self._user(request)
        nodes, jobs = await asyncio.gather(self._ask(self.cloud.nodes()),
                                           self._ask(self.cloud.jobs()))
        refs = [JobRef(str(j.get("namespace")), str(j.get("name"))) for j in jobs]
        described = await asyncio.gather(*(self._described(r) for r in refs))
        return JSONResponse({
            "nodes": [row.to_dict() for row in fleet.fleet(
                nodes, {str(r): d.get("targets") or [] for r, d in zip(refs, described,
                                                                       strict=True)})],
            "jobs": [fleet.job_summary(str(r), d) for r, d in zip(refs, described, strict=True)],
        })

    async def _described(self, job: JobRef) -> dict[str, Any]:
        """A job's ``describe`` answer for the fleet page; a job deleted since the listing (or
        one the cloud cannot describe now) shows without targets instead of failing the page."""
        try:
            return dict(await self._ask(self.cloud.describe(job)))
        except Refused as exc:
            if exc.status == 503:
                raise
            log.info("fleet: describe %s: %s", job, exc.message)
            return {}

    # -- the review queue --

    def _filter(self, request: Request) -> review.QueueFilter:
        query = request.query_params
        try:
            since, until = (dt.date.fromisoformat(query[k]) if query.get(k) else None
                            for k in ("since", "until"))
        except ValueError:
            raise Refused(400, "since/until: expected a date as YYYY-MM-DD") from None
        show = query.get("show", "todo")
        if show not in ("todo", "difficult", "all"):
            raise Refused(400, f"show {show!r}: use todo, difficult or all")
        return review.QueueFilter(node=query.get("node", ""), camera=query.get("camera", ""),
                                  mining=query.get("mining", ""), since=since, until=until,
                                  show=show)  # type: ignore[arg-type]

    async def queue(self, request: Request) -> Response:
        user = self._user(request)
        job = self._job(request.query_params.get("job"))
        wanted = self._filter(request)
        listing = await self._ask(self.cloud.examples(job))
        shown = review.queue(listing.items, self.ledger, wanted, user)
        return JSONResponse({
            "job": str(job), "class_names": listing.class_names or [], "total": listing.total,
            "todo": sum(1 for i in listing.items if self.ledger.state(i) == "todo"),
            "choices": review.choices(listing.items),
            "items": [_row(item) for item in shown],
        })

    async def _item(self, job: JobRef, example: str) -> tuple[dict[str, Any], list[str]]:
        listing = await self._ask(self.cloud.examples(job))
        for item in listing.items:
            if item["id"] == example:
                return item, list(listing.class_names or [])
        raise Refused(404, f"hard example {example[:12]} is not in job {job}'s inbox")

    async def example(self, request: Request) -> Response:
        """One example for the editor: its size and the model's boxes as proposals."""
        self._user(request)
        job = self._job(request.query_params.get("job"))
        item, class_names = await self._item(job, request.query_params.get("id", ""))
        image = await self._image_of(job, item)
        boxes, scores, dropped = proposals(item, image.width, image.height, len(class_names))
        return JSONResponse({**_row(item), "state": self.ledger.state(item),
                             "width": image.width, "height": image.height,
                             "class_names": class_names, "boxes": boxes, "scores": scores,
                             "dropped": dropped})

    async def _image_of(self, job: JobRef, item: dict[str, Any]) -> Any:
        try:
            return await self._ask(self.cloud.image(job, item))
        except KeyError as exc:
            raise Refused(404, str(exc.args[0])) from None

    async def image(self, request: Request) -> Response:
        self._user(request)
        job = self._job(request.query_params.get("job"))
        item, _ = await self._item(job, request.query_params.get("id", ""))
        image = await self._image_of(job, item)
        return FileResponse(image.path, media_type=f"image/{'png' if image.format == 'png' else 'jpeg'}",
                            headers={"Cache-Control": "private, max-age=3600"})

    async def accept(self, request: Request) -> Response:
        """Save the corrected boxes to the job's dataset (first accept wins)."""
        user = self._changing(request)
        body: review.AcceptRequest = await self._body(request, review.AcceptRequest)
        job = self._job(body.job)
        item, class_names = await self._item(job, body.id)
        if item.get("labelled"):
            raise Refused(409, f"hard example {body.id[:12]} is already labelled")
        image = await self._image_of(job, item)
        try:
            boxes = review.checked_boxes(body, image.width, image.height, class_names)
        except review.BoxProblems as exc:
            raise Refused(400, f"nothing saved: {exc.problems[0]}"
                          + (f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1
                             else ""), exc.problems) from None
        taken = self.ledger.begin_save(body.id, user)
        if taken:
            raise Refused(409, f"hard example {body.id[:12]}: {taken}; nothing saved")
        saved = False
        try:
            outcome = await self._ask(self.cloud.save(job, image, boxes, f"console:{user}"))
            saved = outcome.status in ("added", "present")
        finally:
            self.ledger.end_save(body.id, saved)
        await self.hub.tell({"type": "queue", "job": str(job), "id": body.id,
                             "state": "labelled" if saved else "todo", "by": user})
        if outcome.status == "present":
            raise Refused(409, f"hard example {body.id[:12]} is already in {outcome.dataset}; "
                               "nothing added")
        if outcome.status == "rejected":
            raise Refused(400, f"node {outcome.node} refused it: {outcome.reason}")
        if outcome.status != "added":
            raise Refused(504, f"node {outcome.node} has not confirmed the sample yet "
                               f"({outcome.reason}); accept again to check")
        log.info("%s saved %s to %s: %d boxes", user, body.id[:12], outcome.dataset, len(boxes))
        return JSONResponse({"status": "added", "dataset": outcome.dataset, "node": outcome.node,
                             "boxes": boxes})

    async def skip(self, request: Request) -> Response:
        user = self._changing(request)
        body: review.MarkRequest = await self._body(request, review.MarkRequest)
        self.ledger.skip(body.id, user)
        self.state.record_skip(body.id, user)  # a small commit: before the answer
        return JSONResponse({"ok": True})

    async def difficult(self, request: Request) -> Response:
        user = self._changing(request)
        body: review.MarkRequest = await self._body(request, review.MarkRequest)
        self.ledger.mark_difficult(body.id, user, body.difficult)
        self.state.record_difficult(body.id, user, body.difficult)
        await self.hub.tell({"type": "queue", "job": body.job, "id": body.id,
                             "state": "difficult" if body.difficult else "todo", "by": user})
        return JSONResponse({"ok": True})

    # -- live updates --

    async def websocket(self, socket: WebSocket) -> None:
        try:
            self._same_origin(socket)
            self._user(socket)
        except Refused as exc:
            await socket.close(code=1008, reason=exc.message[:120])
            return
        await socket.accept()
        self.hub.sockets.add(socket)
        try:
            while True:
                await socket.receive_text()  # pages say nothing; this notices them leave
        except WebSocketDisconnect:
            pass
        finally:
            self.hub.sockets.discard(socket)

    async def _watch_jobs(self) -> None:
        """Tell open pages when any job's status changed (stage, round, samples, versions) or
        any node's (online, seen, serving)."""
        last: dict[str, str] = {}
        while True:
            if self.hub.sockets:
                for kind, ask in (("jobs", self.cloud.jobs), ("nodes", self.cloud.nodes)):
                    try:
                        items = await ask()
                    except (ApiFailed, NotConnected, RequestTimeout, ValueError) as exc:
                        log.debug("%s watch: %s", kind, exc)
                        continue
                    digest = json.dumps(items, sort_keys=True, default=str)
                    if digest != last.get(kind):
                        last[kind] = digest
                        await self.hub.tell({"type": kind, "items": items})
            await asyncio.sleep(self.settings.poll_s)


def _row(item: dict[str, Any]) -> dict[str, Any]:
    """What the queue list shows of an example."""
    return {"id": item["id"], "node": item.get("node", ""), "camera": review.camera_of(item),
            "mining": item.get("mining", ""), "time": item.get("time"),
            "model_version": item.get("model_version"), "boxes": item.get("boxes"),
            "state": item.get("state", "todo")}
