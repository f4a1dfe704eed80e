"""``/docs`` (Swagger UI) and ``/redoc`` served from files in this package, and the OpenAPI touches
that apply to every protected endpoint.

The vendored files live in ``app/static/vendor`` (served at ``/static/vendor``) with their licences
(swagger-ui-dist and redoc from the npm registry); nothing is loaded from a CDN, so the docs work
on an offline network.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

VENDOR = "/static/vendor"
VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorOut"}
AUTH_ERRORS = {
    "401": "missing or wrong bearer token (answer carries WWW-Authenticate: Bearer)",
    "503": "TRAINER_API_KEY is not set on the server: protected endpoints are disabled (fail closed)",
}

# The docs pages may load only from this service: Redoc's footer would fetch its logo from a CDN
# (no option turns it off), so the browser is told not to. Their HTML (FastAPI's) has inline
# scripts, and both libraries inject styles; Redoc runs its search in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _offline(
        get_swagger_ui_html(
            openapi_url=request.app.openapi_url,
            title=f"{request.app.title} - API docs",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _offline(
        get_redoc_html(
            openapi_url=request.app.openapi_url,
            title=f"{request.app.title} - API reference",
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
    )


def _add_auth_errors(schema: dict) -> None:
    """Every operation that takes the bearer token documents its 401 and 503."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or not operation.get("security"):
                continue
            for code, description in AUTH_ERRORS.items():
                operation["responses"].setdefault(
                    code,
                    {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}},
                )


def install_docs(app: FastAPI) -> None:
    """/docs, /redoc, their vendored files and the OpenAPI touches on ``app``."""
    app.include_router(router)
    app.mount(VENDOR, StaticFiles(directory=VENDOR_DIR), name="api-docs-vendor")
    install_openapi(app)


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
                "ErrorOut",
                {
                    "title": "ErrorOut",
                    "type": "object",
                    "required": ["detail"],
                    "properties": {"detail": {"title": "Detail", "type": "string"}},
                },
            )
            _add_auth_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
