"""/docs: Swagger UI from the fastapi-offline package (no CDN), made accessible.

fastapi-offline serves Swagger UI's files under ``/static-offline-docs`` and ReDoc at
/redoc; this page replaces its /docs, which an axe-core audit
(tests/test_pages_browser_e2e.py) found with serious violations:

* no ``lang`` on ``<html>``: a screen reader guesses the language of every word;
* white on the method badges (GET, POST...) at 2.2-3.8:1 and grey "expand" buttons
  at 2.3:1: engine/web/static/docs.css, loaded after Swagger UI's own style, darkens
  them to WCAG AA (4.5:1);
* each operation's summary is a button holding a link (its deep link): a control in a
  control, which keyboards and screen readers cannot tell apart. Deep linking off, the
  path is plain text in the button;
* an enum parameter's <select> has no name, and a scrolling example cannot be reached
  by keyboard: engine/web/static/docs.js names and focuses them as Swagger UI renders.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse

OFFLINE = "/static-offline-docs"  # fastapi-offline's mount of Swagger UI's files
STYLE = "/static/docs.css"
SCRIPT = "/static/docs.js"  # labels and focus Swagger UI's markup lacks
PARAMETERS = {"deepLinking": False}


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
    """/docs and its OAuth2 redirect (FastAPIOffline built with ``docs_url=None``)."""
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
