"""/docs and /redoc: Swagger UI and ReDoc from the fastapi-offline package (no CDN),
made accessible.

fastapi-offline serves their files under ``/static-offline-docs``; these pages replace
its /docs and /redoc, which an axe-core audit (tests/test_pages_browser_e2e.py) found
with serious violations. /docs (Swagger UI):

* no ``lang`` on ``<html>``: a screen reader guesses the language of every word;
* white on the method badges (GET, POST...) at 2.2-3.8:1 and grey "expand" buttons
  at 2.3:1: engine/web/static/docs.css, loaded after Swagger UI's own style, darkens
  them to WCAG AA (4.5:1);
* each operation's summary is a button holding a link (its deep link): a control in a
  control, which keyboards and screen readers cannot tell apart. Deep linking off, the
  path is plain text in the button;
* an enum parameter's <select> has no name, and a scrolling example cannot be reached
  by keyboard: engine/web/static/docs.js names and focuses them as Swagger UI renders.

/redoc (ReDoc) had no ``lang`` either, ~144 spots of its default theme's text under
4.5:1 and unnamed dropdowns (a response's content type, a schema's "one of"): our own
page, no inline script, starts ReDoc from engine/web/static/redoc.js with a theme at
WCAG AA and names the dropdowns as they render.
"""

from __future__ import annotations

from html import escape

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse

OFFLINE = "/static-offline-docs"  # fastapi-offline's mount of Swagger UI's files
STYLE = "/static/docs.css"
SCRIPT = "/static/docs.js"  # labels and focus Swagger UI's markup lacks
PARAMETERS = {"deepLinking": False}
REDOC_SCRIPT = "/static/redoc.js"  # ReDoc's theme and options, names for its dropdowns
REDOC_STYLE = "/static/redoc.css"  # what ReDoc's theme cannot reach


def redoc_page(title: str, openapi_url: str, root: str = "") -> str:
    """ReDoc's page: a language, a main landmark ReDoc renders into (it reads the
    OpenAPI document's address from it), ReDoc's script, then ours, which starts it."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="{root}{OFFLINE}/favicon.png">
<link rel="stylesheet" href="{root}{REDOC_STYLE}">
</head>
<body>
<main id="redoc" data-spec-url="{escape(openapi_url)}"></main>
<script src="{root}{OFFLINE}/redoc.standalone.js"></script>
<script src="{root}{REDOC_SCRIPT}"></script>
</body>
</html>
"""


def accessible(page: str, root: str = "") -> str:
    """Swagger UI's page with a language, a main landmark, our style after its own and
    our script after its.
    Raises ValueError if FastAPI's template changed so that one would be missing."""
    edits = [
        ("<html>", '<html lang="en">'),
        ("</head>", f'<link rel="stylesheet" href="{root}{STYLE}">\n</head>'),
        ('<div id="swagger-ui">', '<main id="swagger-ui">'),
        ("</body>", f'<script src="{root}{SCRIPT}"></script>\n</body>'),
    ]
    for old, new in edits:
        if old not in page:
            raise ValueError(f"Swagger UI's page has no {old}")
        page = page.replace(old, new, 1)
    # the element the main landmark opened ends where its div did
    head, sep, tail = page.partition('<main id="swagger-ui">')
    return head + sep + tail.replace("</div>", "</main>", 1)


def _text(page: HTMLResponse) -> str:
    return bytes(page.body).decode()


def install(app: FastAPI) -> None:
    """/docs, its OAuth2 redirect and /redoc (FastAPIOffline built with ``docs_url=None``
    and ``redoc_url=None``)."""
    assert app.openapi_url is not None and app.swagger_ui_oauth2_redirect_url is not None
    openapi_url, redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url
    # a FastAPI whose template changed fails here, at start, not on a reader's request
    accessible(_text(get_swagger_ui_html(openapi_url=openapi_url, title="")))

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{OFFLINE}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{OFFLINE}/swagger-ui.css",
            swagger_favicon_url=f"{root}{OFFLINE}/favicon.png",
            swagger_ui_parameters=PARAMETERS,
        )
        return HTMLResponse(accessible(_text(page), root))

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return HTMLResponse(redoc_page(f"{app.title} - ReDoc", f"{root}{openapi_url}", root))
