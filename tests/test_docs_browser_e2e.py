"""The API docs in Chromium with nothing reachable but the engine (issue 16): /docs
(Swagger UI) and /redoc (ReDoc) were blank offline, their scripts and styles on a CDN.
Every request the pages make to anywhere but the engine's origin is aborted and
recorded; the pages must still render the API's operations, make no such request, and
break no rule of the content security policy the engine sends them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import ConsoleMessage, Page, Route, expect, sync_playwright

from tests.engine_proc import EngineProcess
from tests.test_browser import CHROMIUM
from tests.test_web_security import LIGHT

pytestmark = [pytest.mark.browser, pytest.mark.integration]
# an operation every version of the API has
KNOWN_PATH = "/api/v1/calls"
# ReDoc's side menu always shows Redocly's logo from their CDN (no option turns it off):
# the engine's policy refuses it before any request leaves (the console says so), and
# the page hides the image that failed. Only this refusal is expected.
REDOC_LOGO_REFUSED = re.compile(
    r"Loading the image 'https://cdn\.redoc\.ly/redoc/logo-mini\.svg' violates the "
    r"following Content Security Policy directive: \"img-src 'self' data:\""
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("docs") / "engine", **LIGHT).start()
    try:
        yield proc
    finally:
        proc.stop()


@dataclass
class Reader:
    """A Chromium page that reaches the engine only: ``outside`` lists the requests it
    aborted, ``errors`` the console's errors and the page's uncaught exceptions (a
    script or style the content security policy refused is one)."""

    page: Page
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def reader(engine: EngineProcess) -> Iterator[Reader]:
    """A reader of the engine's pages with no other network (offline)."""
    origin = engine.url + "/"
    outside: list[str] = []
    errors: list[str] = []

    def only_the_engine(route: Route) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = browser.new_page()
            page.route("**/*", only_the_engine)
            page.on("console", on_console)
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield Reader(page, outside, errors)
        finally:
            browser.close()


def test_swagger_ui_renders_the_api_offline(engine: EngineProcess, reader: Reader) -> None:
    """/docs lists the API's operations, one of them expanded to its parameters and
    responses, with every script, style and the OpenAPI document from the engine."""
    page = reader.page
    page.goto(f"{engine.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("ccengine", timeout=20_000)
    operation = page.locator(f'.opblock-get .opblock-summary-path[data-path="{KNOWN_PATH}"]')
    expect(operation).to_be_visible()
    operation.click()
    expect(page.locator(".opblock.is-open .responses-wrapper")).to_contain_text("200")
    assert reader.outside == [] and reader.errors == []


def test_redoc_renders_the_api_offline(engine: EngineProcess, reader: Reader) -> None:
    """/redoc shows the API's title and the operation's path, with no fonts from Google
    nor anything else from outside, and no broken image where Redocly's logo was."""
    page = reader.page
    page.goto(f"{engine.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("ccengine", timeout=30_000)
    expect(page.get_by_text(KNOWN_PATH, exact=True).first).to_be_attached()
    expect(page.get_by_alt_text("redocly logo")).to_have_count(0)  # refused, then hidden
    errors = [e for e in reader.errors if not REDOC_LOGO_REFUSED.match(e)]
    assert reader.outside == [] and errors == [], reader.errors
