"""Issue 16's admin pages (/admin) in real Chromium, over the API as it is: a supervisor
changes a queue and adds an article; an admin adds an agent, meets the API's 409, saves
a flow with a mistake, sees the server's own line for it, fixes it and saves it, and
deletes an article after saying yes (not after saying no); an agent is told the pages
are not theirs. Every change is read back through the API with the engine's admin key,
so a page that only looked right fails. Every text on the pages is measured for
contrast (4.5:1), and the pages ask nothing of any origin but the engine's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from tests.engine_proc import EngineProcess
from tests.test_browser import CHROMIUM
from tests.test_web_security import LIGHT

pytestmark = [pytest.mark.browser, pytest.mark.integration]

RETURNS = """\
id: returns
numbers: ["+15550003333"]
greeting: Returns here. What would you like to send back?
intents:
  - name: label
    examples: [I need a return label, send me a label]
    say: A label is on its way.
"""
# a typo in a key, on line 6: the server names that line
MISTAKE = RETURNS.replace("    examples:", "    exmples:")

LOGGED_4XX = "Failed to load resource: the server responded with a status of 4"

# The contrast ratio (WCAG 2) of every visible, enabled element's own text against the
# first opaque background behind it; those under 4.5:1, with their colours.
LOW_CONTRAST = """() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => v / 255)
    .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4))
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] === 1) return c;
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.body.querySelectorAll("*")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length || el.disabled || el.closest("[hidden]")) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < 4.5) low.push(`${el.tagName} "${text}" ${ratio.toFixed(2)}`);
  }
  return low;
}"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(tmp_path_factory.mktemp("admin") / "engine", **LIGHT).start()
    try:
        yield proc
    finally:
        proc.stop()


class Pages:
    """Chromium pages that reach the engine only: ``outside`` lists what they asked of
    anywhere else (aborted), ``errors`` their uncaught exceptions and console errors."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.browser, self.url = browser, url
        self.outside: list[str] = []
        self.errors: list[str] = []

    def new(self) -> Page:
        page = self.browser.new_context().new_page()
        page.route("**/*", self._only_the_engine)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", self._console)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs every 4xx answer as an error: the page shows those (they are
        # the test's refusals); anything else (a script error, a refused style) counts
        if message.type == "error" and not message.text.startswith(LOGGED_4XX):
            self.errors.append(message.text)

    def _only_the_engine(self, route: Route) -> None:
        if route.request.url.startswith(self.url + "/"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort("internetdisconnected")

    def signed_in(self, name: str, role: str, page: Page | None = None) -> Page:
        """Signed in at the agent desk (/agent) as ``name``, then on /admin."""
        page = page or self.new()
        if page.url != f"{self.url}/agent":
            page.goto(f"{self.url}/agent")
        page.get_by_test_id("username").fill(name)
        page.get_by_test_id("password").fill(f"pw-{name}-123")
        page.get_by_test_id("sign-in").click()
        expect(page.get_by_test_id("who")).to_contain_text(f"({role})")
        page.goto(f"{self.url}/admin")
        expect(page.get_by_test_id("who")).to_contain_text(f"({role})")
        return page


def contrast(page: Page) -> list[str]:
    low: list[str] = page.evaluate(LOW_CONTRAST)
    return low


def test_a_supervisor_and_an_admin_change_things_and_an_agent_is_told_no(
    engine: EngineProcess, output_dir: Path
) -> None:
    for name, role in (("sue", "supervisor"), ("ada", "admin"), ("ann", "agent")):
        engine.add_user(name, f"pw-{name}-123", "--role", role)
    with (
        sync_playwright() as p,
        httpx.Client(base_url=engine.url, headers=engine.headers, timeout=30) as api,
    ):
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        pages = Pages(browser, engine.url)
        try:
            # not signed in: sent to the desk's sign-in
            sue = pages.new()
            sue.goto(f"{engine.url}/admin")
            expect(sue.get_by_test_id("signed-out")).to_be_visible()
            expect(sue.get_by_test_id("console")).to_be_hidden()
            assert contrast(sue) == []
            sue.get_by_test_id("signin-link").click()
            sue.wait_for_url(f"{engine.url}/agent")
            pages.signed_in("sue", "supervisor", sue)
            status = sue.get_by_test_id("status")

            # the supervisor: a queue changed, by keyboard from the tab list on
            expect(sue.get_by_test_id("people-note")).to_contain_text("Only admins")
            expect(sue.get_by_test_id("people-form")).to_be_hidden()
            expect(sue.get_by_test_id("tab-webhooks")).to_be_hidden()
            assert contrast(sue) == []
            sue.get_by_test_id("tab-people").focus()
            sue.keyboard.press("ArrowRight")
            expect(sue.get_by_test_id("queues")).to_be_visible()
            expect(sue.get_by_test_id("tab-queues")).to_be_focused()
            general = sue.locator("[data-testid=queues-table] tr[data-name=general]")
            general.get_by_role("button", name="Edit queue general").click()
            expect(sue.get_by_test_id("queue-name")).to_have_value("general")
            sue.get_by_test_id("queue-skills").fill("billing, vip")
            sue.get_by_test_id("queue-priority").fill("7")
            sue.get_by_test_id("queue-announcement").fill("Please hold for billing.")
            sue.get_by_test_id("queue-announcement").press("Tab")  # on to Save
            expect(sue.get_by_test_id("queue-save")).to_be_focused()
            sue.keyboard.press("Enter")
            expect(status).to_have_text("Saved queue general.")
            queue = {q["name"]: q for q in api.get("/api/v1/queues").json()}["general"]
            assert (queue["skills"], queue["priority"], queue["announcement"]) == (
                ["billing", "vip"], 7, "Please hold for billing.",
            )  # fmt: skip
            expect(general).to_contain_text("billing, vip")
            assert contrast(sue) == []

            # ... and an article added
            sue.get_by_test_id("tab-articles").click()
            sue.get_by_test_id("article-id").fill("refunds")
            sue.get_by_test_id("article-title").fill("Refunds")
            sue.get_by_test_id("article-body").fill("Refunds reach the card within 5 days.")
            sue.get_by_test_id("article-tags").fill("billing, refund")
            sue.get_by_test_id("article-save").click()
            expect(status).to_have_text("Saved article refunds.")
            article = api.get("/api/v1/knowledge-base/articles/refunds").json()
            assert article == {
                "id": "refunds", "title": "Refunds", "tags": ["billing", "refund"],
                "body": "Refunds reach the card within 5 days.",
            }  # fmt: skip
            # adding under a taken name asks first: the API's PUT would replace it
            sue.get_by_test_id("article-id").fill("refunds")
            sue.get_by_test_id("article-title").fill("Something else")
            sue.get_by_test_id("article-body").fill("Other words.")
            asked: list[str] = []
            sue.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
            sue.get_by_test_id("article-save").click()
            for _ in range(50):
                if asked:
                    break
                sue.wait_for_timeout(100)
            assert asked == ["The article refunds exists already. Replace it?"]
            assert api.get("/api/v1/knowledge-base/articles/refunds").json()["title"] == "Refunds"
            sue.get_by_test_id("tab-flows").click()
            expect(sue.get_by_test_id("flows-note")).to_contain_text("Only admins change flows")
            expect(sue.get_by_test_id("flows-form")).to_be_hidden()

            # the admin: an agent added, and the same name again is the API's 409
            ada = pages.signed_in("ada", "admin")
            status = ada.get_by_test_id("status")
            expect(ada.get_by_test_id("people-table")).to_contain_text("supervisor")
            for outcome in ("Saved person zoe.", "The person was not saved."):
                ada.get_by_test_id("person-username").fill("zoe")
                ada.get_by_test_id("person-name").fill("Zoe Ng")
                ada.get_by_test_id("person-skills").fill("billing")
                ada.get_by_test_id("person-password").fill("pw-zoe-123")
                ada.get_by_test_id("person-save").click()
                expect(status).to_have_text(outcome)
            expect(ada.get_by_test_id("people-error")).to_have_text("user zoe exists")
            zoe = [a for a in api.get("/api/v1/agents").json() if a["username"] == "zoe"]
            assert [(a["display_name"], a["skills"]) for a in zoe] == [("Zoe Ng", ["billing"])]
            r = api.post("/api/v1/auth/login", json={"username": "zoe", "password": "pw-zoe-123"})
            assert r.status_code == 200 and r.json()["user"]["role"] == "agent", r.text

            # a flow with a mistake: the server's line and reason, the line selected
            ada.get_by_test_id("tab-flows").click()
            ada.get_by_test_id("flow-id").fill("returns")
            ada.get_by_test_id("flow-yaml").fill(MISTAKE)
            ada.get_by_test_id("flow-save").click()
            refused = api.put(
                "/api/v1/bot/flows/returns", content=MISTAKE, headers={"content-type": "text/plain"}
            )
            assert refused.status_code == 422 and refused.json()["line"] == 6, refused.text
            error = ada.get_by_test_id("flows-error")
            expect(error).to_have_text(f"Line 6: {refused.json()['reason']}")
            expect(ada.get_by_test_id("flow-yaml")).to_have_attribute("aria-invalid", "true")
            selected = ada.get_by_test_id("flow-yaml").evaluate(
                "t => t.value.slice(t.selectionStart, t.selectionEnd)"
            )
            assert selected == "    exmples: [I need a return label, send me a label]"
            assert api.get("/api/v1/bot/flows/returns").status_code == 404
            ada.screenshot(path=output_dir / "admin-flow-error.png", full_page=True)
            assert contrast(ada) == []
            ada.get_by_test_id("flow-yaml").fill(RETURNS)
            ada.get_by_test_id("flow-save").click()
            expect(status).to_have_text("Saved flow returns.")
            expect(error).to_have_text("")
            saved = api.get("/api/v1/bot/flows/returns").json()
            assert (saved["yaml"], saved["source"], saved["numbers"]) == (
                RETURNS, "api", ["+15550003333"],
            )  # fmt: skip
            returns = ada.locator("[data-testid=flows-table] tr[data-name=returns]")
            returns.get_by_role("button", name="Edit flow returns").click()
            expect(ada.get_by_test_id("flow-yaml")).to_have_value(RETURNS)
            expect(ada.get_by_test_id("flow-id")).to_have_value("returns")
            # no Delete on one's own row (and the API keeps the last admin: 409)
            ada.get_by_test_id("tab-people").click()
            expect(ada.get_by_role("button", name="Delete person zoe")).to_be_visible()
            expect(ada.get_by_role("button", name="Delete person ada")).to_have_count(0)
            ada.get_by_test_id("tab-flows").click()

            # a delete asks first: no keeps the article, yes removes it
            ada.get_by_test_id("tab-articles").click()
            delete = ada.get_by_role("button", name="Delete article refunds")
            ada.once("dialog", lambda d: d.dismiss())
            delete.click()
            ada.get_by_test_id("tab-articles").click()  # the list again, from the API
            expect(delete).to_be_visible()
            assert api.get("/api/v1/knowledge-base/articles/refunds").status_code == 200
            ada.once("dialog", lambda d: d.accept())
            delete.click()
            expect(status).to_have_text("Deleted article refunds.")
            assert api.get("/api/v1/knowledge-base/articles/refunds").status_code == 404

            # an agent: told, and shown nothing to change
            ann = pages.signed_in("ann", "agent")
            expect(ann.get_by_test_id("denied")).to_contain_text(
                "Only supervisors and admins can change"
            )
            expect(ann.get_by_test_id("console")).to_be_hidden()
            assert contrast(ann) == []
            assert pages.outside == [] and pages.errors == [], (pages.outside, pages.errors)
        finally:
            browser.close()
