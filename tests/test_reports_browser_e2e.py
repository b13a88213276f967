"""Issue 16's analytics pages in real Chromium, on one engine process: the reports page
draws its charts with plotly.js served by the engine, and no request leaves the engine;
an ended call's page shows who took it, its notes, analytics with the sentiment chart,
the recording (or that there is none) and its downloads.

The failure this guards: charts from a CDN (no reports offline, and every reader's
browser telling a third party), or a page that is blank for an ended call."""

from __future__ import annotations

import wave
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, expect, sync_playwright

from tests.engine_proc import PAGE_HEADERS, EngineProcess
from tests.test_browser import launch

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def ended_chat(engine: EngineProcess, http: httpx.Client) -> str:
    """A chat (no audio: quick) in which the caller asks for a refund, with a note."""
    chat = http.post("/api/v1/chats", json={"language": "en"}).json()
    caller = {"Authorization": f"Bearer {chat['caller_token']}"}
    for text in ("Hello, my parcel never arrived.", "I want a refund please."):
        r = http.post(
            f"/api/v1/calls/{chat['call_id']}/messages", json={"text": text}, headers=caller
        )
        assert r.status_code == 204, r.text
    call_id = str(chat["call_id"])
    r = http.post(
        f"/api/v1/calls/{call_id}/notes", json={"text": "refund promised"}, headers=engine.headers
    )
    assert r.status_code == 201, r.text
    r = http.post(f"/api/v1/calls/{call_id}/hangup", headers=engine.headers)
    assert r.status_code == 202, r.text
    return call_id


def silence(path: Path) -> Path:
    """A second of silence for Chromium's fake microphone (these pages never use it)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 16000)
    return path


def test_reports_and_an_ended_calls_page_render_charts_from_the_engine_alone(
    engine: EngineProcess, tmp_path: Path, output_dir: Path
) -> None:
    engine.add_user("sue", "pw-sue-123", "--role", "supervisor")
    with httpx.Client(base_url=engine.url, timeout=30) as http:
        call_id = ended_chat(engine, http)
    with sync_playwright() as p:
        browser = launch(p, silence(tmp_path / "silence.wav"))
        try:
            context = browser.new_context()
            r = context.request.post(
                f"{engine.url}/api/v1/auth/login",
                data={"username": "sue", "password": "pw-sue-123"},
                headers=PAGE_HEADERS,
            )
            assert r.ok, r.text()
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            problems: list[str] = []

            def console(m: ConsoleMessage) -> None:
                if m.type == "error":
                    problems.append(f"{m.location['url']}: {m.text}")

            page.on("console", console)
            page.on("pageerror", lambda e: problems.append(str(e)))

            page.goto(f"{engine.url}/reports")
            expect(page.get_by_test_id("report-status")).to_contain_text(
                "1 ended calls", timeout=20_000
            )
            for chart in ("chart-volume", "chart-handle", "chart-talk", "chart-categories"):
                # plotly draws into an <svg class="main-svg">: bars are path.point
                expect(page.get_by_test_id(chart).locator("svg.main-svg").first).to_be_visible()
            expect(
                page.get_by_test_id("chart-volume").locator("g.point path").first
            ).to_be_attached()
            expect(page.get_by_test_id("chart-categories")).to_contain_text("refund request")
            expect(page.get_by_test_id("report-table")).to_contain_text("total")
            page.get_by_test_id("report-group").select_option("day")
            page.get_by_test_id("report-apply").click()
            expect(page.get_by_test_id("report-status")).to_contain_text("by day")
            csv_href = page.get_by_test_id("report-csv").get_attribute("href")
            page.screenshot(path=str(output_dir / "reports.png"), full_page=True)

            page.goto(f"{engine.url}/calls/{call_id}")
            expect(page.get_by_test_id("analytics-status")).to_contain_text(
                "Handle time", timeout=20_000
            )
            expect(page.get_by_test_id("review-disposition")).to_have_text("none given")
            expect(page.get_by_test_id("review-notes")).to_contain_text("refund promised")
            expect(page.get_by_test_id("category").first).to_contain_text("refund request")
            expect(
                page.get_by_test_id("sentiment-chart").locator("svg.main-svg").first
            ).to_be_visible()
            expect(page.get_by_test_id("no-recording")).to_be_visible()
            expect(page.get_by_test_id("downloads")).to_contain_text("Transcript (WebVTT)")
            page.screenshot(path=str(output_dir / "ended-call.png"), full_page=True)
            csv_text = context.request.get(f"{engine.url}{csv_href}").text()
        finally:
            browser.close()
    outside = [u for u in requests if not u.startswith(engine.url) and not u.startswith("data:")]
    assert outside == [], outside
    assert any(u.endswith("/static/vendor/plotly.min.js") for u in requests)
    csp = [m for m in problems if "Content Security Policy" in m]
    assert csp == [], csp
    assert csv_text.startswith("day,calls,"), csv_text[:100]
