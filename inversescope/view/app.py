"""The view's web app: ``create_app(workdir)`` builds a FastAPI app over one workdir.

Pages are rendered on the server from Jinja2 templates, their plots inline SVG; the only
static file is the stylesheet, shipped in the package (nothing loads from elsewhere). Every
page's state is in its URL. A page that cannot be shown answers with a page saying what is
missing (404) or what is out of bounds or unreadable (422); an unexpected error answers 500
with one line, its traceback going to the server's log only.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from inversescope.view.errors import ViewError
from inversescope.view.rows import visible
from inversescope.view.workdir import Workdir

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def url(path: str, **params) -> str:
    """``path`` with the query string of the non-empty ``params`` (lists repeat the name)."""
    kept = {k: v for k, v in params.items() if v is not None and v != "" and v != []}
    return f"{path}?{urlencode(kept, doseq=True)}" if kept else path


def num(value, digits: int = 3) -> str:
    """A number for a page: fixed digits; missing or NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def pct(value) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(url=url)
    templates.env.filters.update(num=num, pct=pct, visible=visible)
    return templates


def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(
        request, name, {"workdir": request.app.state.workdir.path, **context}, status_code=status
    )


def _error_page(request: Request, status: int, title: str, detail: str, hint: str | None = None):
    return render(request, "error.html", status, title=title, detail=detail, hint=hint)


def create_app(workdir: str | Path, torch_threads: int | None = 1) -> FastAPI:
    """The view of ``workdir``: its runs are opened on first use and kept for the app's life
    (and with them the models, for the invert page). ``torch_threads``: torch's CPU threads
    for the invert page (None: torch's default). One thread samples fastest on a CPU shared
    with other work: 32 samples of ioi-tiny's models took 0.2 to 0.5 s on one thread and 2 to
    7 s on two while other processes loaded this machine's 2 cores.
    """
    from inversescope.view import invert, pages, search, site_pages

    app = FastAPI(title="InverseScope view", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workdir = Workdir(workdir)
    app.state.torch_threads = torch_threads
    app.state.templates = _templates()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (pages, site_pages, search, invert):
        app.include_router(module.router)

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        ms = (time.perf_counter() - t0) * 1000
        response.headers["Server-Timing"] = f"app;dur={ms:.1f}"
        return response

    @app.exception_handler(ViewError)
    async def view_error(request: Request, e: ViewError):
        return _error_page(request, e.status, e.title, e.detail, e.hint)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, e: RequestValidationError):
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            lines.append(f"{where}: {err.get('msg')} (got {err.get('input')!r})")
        return _error_page(request, 422, "Bad value in the URL", "; ".join(lines))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            return _error_page(
                request, 404, "No such page", f"nothing is served at {request.url.path}"
            )
        return _error_page(request, e.status_code, "Request refused", str(e.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        log.exception("view: %s failed", request.url)
        return _error_page(
            request,
            500,
            "This page failed",
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "the server's log has the traceback; the other pages keep working",
        )

    return app
