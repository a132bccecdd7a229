"""The review page: a Starlette app with server-rendered Jinja2 templates (no JavaScript at all).

    GET  /            overview per day and model version
    GET  /rows        thumbnail grid: filters and sort as query parameters (queries.Filters)
    GET  /row         one prediction row (?id=IMAGE_ID&version=MODEL_VERSION) and its reviews
    GET  /image/N/P   a JPEG made from the image P under source root N (?side=thumb|large)
    POST /review      record a correction (absent with read_only)

Every page is sent with a Content-Security-Policy that allows no script and no foreign resource;
templates escape every value; requests naming a host other than the allowed ones are refused (a
DNS-rebinding page cannot reach the server through its own name).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.review import queries, store
from pipeline.review.csrf import COOKIE, Csrf
from pipeline.review.roots import SIDES, ImageError, Roots, thumbnail
from pipeline.table import PredictionTable, redacted

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
MAX_FORM_BYTES = 64 * 1024


LISTS_TTL_S = 60.0  # how long the label and version lists of the forms are reused


class Tables(threading.local):
    """One connection per thread (a SQLite connection belongs to the thread that opened it)."""

    def __init__(self, url: str, name: str):
        self.url, self.name, self.table = url, name, None

    def get(self) -> PredictionTable:
        if self.table is None:
            self.table = PredictionTable(self.url, self.name)
        return self.table


class Lists:
    """The table's labels and model versions for the forms, read at most once a minute: each is a
    scan of the whole table, and they change only with a new model."""

    def __init__(self, tables: Tables):
        self.tables, self.at, self.values = tables, -LISTS_TTL_S, ([], [])

    def get(self) -> tuple[list[str], list[str]]:
        if time.monotonic() - self.at > LISTS_TTL_S:
            table = self.tables.get()
            self.values, self.at = (table.labels(), queries.versions(table)), time.monotonic()
        return self.values


def create_app(url: str, name: str, roots: Roots, read_only: bool = False, reviewer: str = "",
               allowed_hosts=("127.0.0.1", "localhost")) -> Starlette:
    tables, csrf = Tables(url, name), Csrf()
    lists = Lists(tables)
    env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["score"] = lambda v: "–" if v is None else f"{v:.3f}"
    env.filters["answers"] = lambda v: "–" if not v else " · ".join(f"{t}: {c}" for t, c in json.loads(v).items())

    def page(request: Request, template: str, status: int = 200, **values) -> HTMLResponse:
        session = request.cookies.get(COOKIE) or Csrf.new_session()
        body = env.get_template(template).render(
            table=f"{redacted(url)}#{name}", read_only=read_only, csrf=csrf.token(session),
            reviewer=request.cookies.get("reviewer", reviewer), image_url=image_url, link=link, **values)
        response = HTMLResponse(body, status, headers=HEADERS)
        if COOKIE not in request.cookies:
            response.set_cookie(COOKIE, session, httponly=True, samesite="strict")
        return response

    def image_url(source: str, side: str = "thumb") -> str | None:
        found = roots.locate(source)
        return None if found is None else f"/image/{found[0]}/{quote(found[1])}?side={side}"

    def link(path: str, params: dict) -> str:
        params = {k: v for k, v in params.items() if v not in ("", None)}
        return f"{path}?{urlencode(params)}" if params else path

    def failure(request: Request, status: int, message: str) -> HTMLResponse:
        return page(request, "message.html", status, message=message)

    async def overview(request: Request):
        groups = queries.overview(tables.get())
        labels = sorted({label for g in groups for label in g["labels"] if label is not None})
        return page(request, "overview.html", groups=groups, labels=labels)

    async def rows(request: Request):
        try:
            f = queries.Filters.parse(request.query_params)
        except queries.FilterError as e:
            return failure(request, 400, str(e))
        table = tables.get()
        found, more = queries.page(table, f)
        labels, versions = lists.get()
        return page(request, "rows.html", rows=found, more=more, f=f, labels=labels, versions=versions,
                    sorts=list(queries.SORTS), statuses=queries.STATUSES)

    async def detail(request: Request):
        table = tables.get()
        image_id, version = request.query_params.get("id", ""), request.query_params.get("version", "")
        r = queries.row(table, image_id, version)
        if r is None:
            return failure(request, 404, "no such prediction row")
        return page(request, "detail.html", row=r, reviews=store.of_row(table, image_id, version),
                    labels=lists.get()[0], verdicts=store.VERDICTS)

    async def image(request: Request):
        side = SIDES.get(request.query_params.get("side", "thumb"))
        real = roots.resolve(request.path_params["root"], request.path_params["path"])
        if side is None or real is None:
            return Response("not found", 404, headers=HEADERS)
        try:
            data = thumbnail(real, side)
        except (ImageError, OSError):
            return Response("not a readable image", 404, headers=HEADERS)
        return Response(data, media_type="image/jpeg", headers={**HEADERS, "Cache-Control": "private, max-age=3600"})

    async def review(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return failure(request, 415, "send the review form as application/x-www-form-urlencoded")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return failure(request, 413, "form too large")
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        one = dict(form)
        own = f"{request.url.scheme}://{request.url.netloc}"
        if not csrf.valid(request.cookies.get(COOKIE), one.get("csrf"), request.headers.get("origin"), own):
            return failure(request, 403, "the form's token is missing or stale: reload the page and submit again")
        table = tables.get()
        r = queries.row(table, one.get("id", ""), one.get("version", ""))
        if r is None:
            return failure(request, 404, "no such prediction row")
        labels = [v for k, v in form if k == "label"] + [one.get("new_label", "")]
        try:
            store.record(table, r, one.get("reviewer", ""), one.get("verdict", ""), labels)
        except store.ReviewError as e:
            return failure(request, 400, str(e))
        response = RedirectResponse(link("/row", {"id": r["image_id"], "version": r["model_version"]}), 303)
        response.set_cookie("reviewer", one["reviewer"].strip(), httponly=True, samesite="strict")
        return response

    routes = [Route("/", overview), Route("/rows", rows), Route("/row", detail),
              Route("/image/{root:int}/{path:path}", image)]
    if not read_only:
        routes.append(Route("/review", review, methods=["POST"]))
    store.create(tables.get())
    queries.create_indexes(tables.get())
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])
