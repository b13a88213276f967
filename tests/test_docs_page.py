"""/docs' page (engine/api/docs.py): FastAPI's Swagger UI template, made accessible.
The failure: no language on the page, a control inside each operation's control, and
badges at 2.2:1; the browser audit (tests/test_pages_browser_e2e.py) sees the result,
this sees that each edit still finds its place in FastAPI's template. And /redoc's page,
our own: a language, a main landmark, ReDoc and our scripts from the engine."""

from __future__ import annotations

import re

import pytest
from fastapi.openapi.docs import get_swagger_ui_html

from engine.api.docs import PARAMETERS, accessible, redoc_page


def test_the_page_gets_a_language_a_main_landmark_and_our_style() -> None:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json", title="t", swagger_ui_parameters=PARAMETERS
    ).body.decode()
    out = accessible(page, "/root")
    assert '<html lang="en">' in out
    assert '<link rel="stylesheet" href="/root/static/docs.css">\n</head>' in out
    assert '<main id="swagger-ui">\n    </main>' in out and "<div" not in out
    assert '<script src="/root/static/docs.js"></script>\n</body>' in out
    assert '"deepLinking": false' in out  # the operations' paths are text, not links


def test_a_template_that_changed_is_refused() -> None:
    with pytest.raises(ValueError, match="no <html>"):
        accessible("<!DOCTYPE html><html class='x'><head></head></html>")


def test_redocs_page_has_a_language_and_no_inline_script() -> None:
    page = redoc_page('ccengine "<b>" - ReDoc', "/root/openapi.json", "/root")
    assert '<html lang="en">' in page
    assert '<main id="redoc" data-spec-url="/root/openapi.json"></main>' in page
    assert "<b>" not in page and "&lt;b&gt;" in page  # the title is escaped
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts == [
        '<script src="/root/static-offline-docs/redoc.standalone.js">',
        '<script src="/root/static/redoc.js">',
    ]
    assert '<link rel="stylesheet" href="/root/static/redoc.css">' in page
    assert "<style" not in page and "cdn" not in page
