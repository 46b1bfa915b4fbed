"""The FastAPI app: routers, error handlers, metrics, the dashboard and offline API docs.

Open without a key: ``/healthz``, ``/metrics``, the dashboard page ``/`` with its static
files, ``/openapi.json`` and ``/docs``. Everything under ``/v1`` needs an API key (auth.py).

Nothing the browser loads comes from the internet: the dashboard is vanilla JS with
inline SVG charts (services/api/static/), and ``/docs`` serves the Swagger UI files that
the ``swagger-ui-bundle-v2`` wheel ships (``/redoc``, which only exists as a CDN script,
is off). The dashboard page is sent with a strict Content-Security-Policy: station,
camera and class names come from agents, so the page must not run anything else.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from services.api import errors
from services.api.context import ApiContext
from services.api.metrics import MetricsMiddleware
from services.api.routes import defects, models, ops, rollouts, stations, stats
from slimspect import __version__

STATIC = resources.files("services.api") / "static"
DASHBOARD_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
DESCRIPTION = """Defect queries, statistics, models and fleet rollouts of slimspect.

Authenticate with an API key (`slimspect api key add --role viewer|operator NAME`), sent
as `Authorization: Bearer <key>` or `X-API-Key: <key>`. `viewer` keys read; `operator`
keys also start, promote and roll back rollouts. Times are unix milliseconds, UTC.
"""


def _mount_docs(app: FastAPI) -> None:
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="slimspect API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def create_app(ctx: ApiContext) -> FastAPI:
    """The app over ``ctx`` (which the caller opens and closes: Redis, store, rollouts)."""
    app = FastAPI(
        title="slimspect API",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = ctx
    errors.install(app)
    for exc_type, handler in rollouts.ERROR_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)  # type: ignore[arg-type]
    app.include_router(ops.router)
    app.include_router(defects.build_router(ctx.settings))
    app.include_router(stats.build_router(ctx.settings))
    app.include_router(stations.router)
    app.include_router(models.router)
    app.include_router(rollouts.router)
    if ctx.settings.docs:
        _mount_docs(app)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(
            str(STATIC / "index.html"),
            headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-cache"},
        )

    # Outermost first: CatchAll must see what MetricsMiddleware lets through.
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)
    app.add_middleware(errors.CatchAll)
    return app
