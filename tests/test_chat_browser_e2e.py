"""Chat in Chromium (issue 15): the caller page and the agent desk of a real engine
process with the example flow and its articles, both driven as a person would. The
virtual agent greets the chat and answers from the knowledge base; asked for a person,
it rings the desk, whose agent takes it and replies; the customer presses Call and the
chat goes on as a voice call that rings the same agent once the chat is wrapped up,
whose desk shows the chat above the call's transcript. What is asserted is what the two
pages show."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Page, expect

from tests import speech
from tests.engine_proc import EngineProcess
from tests.test_bot_browser_e2e import chromium, signed_in_desk
from tests.test_chat_e2e import GREETING, example_engine

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]
HOURS = "What are your opening hours?"
PERSON = "Can I talk to a real person please?"
REPLY = "Hi Ann, Bea here. How can I help?"
ORDER = "My order 83016 has not arrived."


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = example_engine(
        tmp_path_factory.mktemp("chat-browser-engine"),
        # two Chromium pages beside it on this 2-core box: not a test of admission, whose
        # 503 for the chat or the call would end the story
        CCENGINE_ADMISSION_MAX_LOOP_LAG_MS="100000",
        CCENGINE_ADMISSION_MAX_CPU="1",
    )
    try:
        yield proc
    finally:
        proc.stop()


async def send(page: Page, box: str, field: str, text: str) -> None:
    """Type ``text`` into a form's field and press its button, as a person would."""
    await page.get_by_test_id(field).fill(text)
    await page.get_by_test_id(box).get_by_role("button").click()
    await expect(page.get_by_test_id(field)).to_have_value("")


async def test_a_chat_in_chromium_is_answered_taken_by_the_desk_and_goes_on_as_a_call(
    engine: EngineProcess, tmp_path: Path, output_dir: Path
) -> None:
    """The caller page's Chat: greeted and answered from the knowledge base, then a
    person asked for. The desk rings with a chat, its agent accepts it and replies:
    each side's lines are on the other's page. The caller presses Call: the page says
    the chat goes on as a call, the desk's chat ends "upgraded" and is wrapped up, the
    call rings the same desk, is answered with its softphone and bridged, and the chat
    is shown above the call's transcript with the lines both typed."""
    engine.add_user("bea", "pw-bea-123", "--name", "Bea Lund")  # the caller reads "Bea"
    mic = speech.write_wav(tmp_path / "silence.wav", np.zeros(48000, dtype=np.int16), 48000)
    started = time.monotonic()
    async with chromium(mic) as browser:
        desk = await signed_in_desk(browser, engine.url, "bea", "pw-bea-123")
        caller = await (await browser.new_context(permissions=["microphone"])).new_page()
        await caller.goto(f"{engine.url}/call")
        await caller.get_by_test_id("identity").fill("Ann")
        await expect(caller.get_by_test_id("chat-box")).to_be_hidden()
        await caller.get_by_test_id("chat").click()
        await expect(caller.get_by_test_id("error")).to_have_text("")
        state = caller.get_by_test_id("state")
        await expect(state).to_have_attribute("data-state", re.compile("chat|active"))
        captions = caller.get_by_test_id("captions")
        bot = captions.locator(".line.bot")
        await expect(bot.first).to_contain_text(GREETING, timeout=15_000)
        await expect(state).to_have_text("You're chatting with our assistant")

        # answered from deploy/knowledge/opening-hours.md
        await send(caller, "chat-box", "message", HOURS)
        mine = captions.locator(".line.final[data-speaker=caller]")
        await expect(mine.locator(".who")).to_have_text(["you"])
        await expect(mine.locator(".text")).to_have_text([HOURS])
        answer = bot.filter(has_text="eight in the morning")
        await expect(answer).to_have_count(1, timeout=15_000)

        # a person: the desk rings with a chat, and what was asked
        await send(caller, "chat-box", "message", PERSON)
        await expect(desk.get_by_test_id("ring")).to_be_visible(timeout=30_000)
        preview = desk.get_by_test_id("preview")
        await expect(preview).to_contain_text("Ann · chat")
        await expect(preview.locator("dt:text-is('Asked for') + dd")).to_have_text("person")
        await desk.get_by_test_id("accept").click()
        await expect(desk.get_by_test_id("call-state")).to_have_text("bridged")
        await expect(desk.get_by_test_id("caller")).to_contain_text("Ann · chat")
        await expect(desk.get_by_test_id("reply-box")).to_be_visible()
        await expect(desk.get_by_test_id("mute")).to_be_hidden()
        transcript = desk.get_by_test_id("transcript")
        await expect(transcript).to_contain_text(PERSON)
        # in words for the customer, and no place in line once out of it
        await expect(state).to_have_text("You're chatting with Bea")
        await expect(caller.get_by_test_id("queue")).to_be_hidden()

        # the agent's reply on the caller's page, the caller's line on the desk
        await send(desk, "reply-box", "reply", REPLY)
        agent_line = captions.locator(".line.final[data-speaker=agent]")
        await expect(agent_line).to_have_count(1)
        await expect(agent_line.locator(".who")).to_have_text("Bea")
        await expect(agent_line.locator(".text")).to_have_text(REPLY)
        await send(caller, "chat-box", "message", ORDER)
        await expect(transcript.locator(".line.final.caller").last).to_contain_text(ORDER)
        # each line at when it was typed, from the chat's start (all were at 0.0 s)
        times = [float(t.rstrip("s")) for t in await captions.locator(".t").all_inner_texts()]
        assert times == sorted(times) and times[-1] > 0.0, times
        await expect(transcript.locator(".line.final.agent")).to_contain_text([REPLY])
        await desk.screenshot(path=str(output_dir / "agent-chat.png"), full_page=True)
        await caller.screenshot(path=str(output_dir / "caller-chat.png"), full_page=True)

        # Call: the chat goes on as a voice call
        await caller.get_by_test_id("call").click()
        await expect(caller.get_by_test_id("notice")).to_contain_text(
            "The chat goes on as this call.", timeout=20_000
        )
        await expect(caller.get_by_test_id("chat-box")).to_be_hidden()
        await expect(desk.get_by_test_id("call-error")).to_have_text("The call ended (upgraded).")
        await expect(desk.get_by_test_id("wrapup")).to_be_visible()
        await expect(state).to_have_attribute("data-state", "queued", timeout=20_000)
        await expect(state).to_have_text("Waiting for the next available person")
        await desk.get_by_test_id("disposition").select_option("resolved")
        await desk.get_by_test_id("wrapup-submit").click()
        await expect(desk.get_by_test_id("wrapup")).to_be_hidden()

        # the call rings the same desk; answered, the chat is above its transcript
        await expect(desk.get_by_test_id("ring")).to_be_visible(timeout=30_000)
        await expect(preview).to_contain_text("Ann · webrtc")
        await expect(preview.locator("dt:text-is('Why') + dd")).to_have_text(
            "chat upgraded to a call"
        )
        await desk.get_by_test_id("accept").click()
        await expect(desk.get_by_test_id("call-state")).to_have_text("bridged", timeout=20_000)
        await expect(state).to_have_attribute("data-state", "bridged")
        await expect(state).to_have_text("You're through to Bea")
        before = desk.get_by_test_id("chat-before")
        await expect(before).to_be_visible()
        await expect(before).to_contain_text("The chat before this call")
        who = ["assistant", "caller", "assistant", "assistant", "caller", "assistant", "agent"]
        await expect(before.locator(".line .who")).to_have_text([*who, "caller"])
        await expect(before.locator(".line .text")).to_contain_text(
            [GREETING, HOURS, "eight in the morning", PERSON, REPLY, ORDER]
        )
        await expect(desk.get_by_test_id("reply-box")).to_be_hidden()
        await expect(desk.get_by_test_id("mute")).to_be_visible()
        chat_box = await before.bounding_box()
        said_box = await transcript.bounding_box()
        assert chat_box is not None and said_box is not None
        assert chat_box["y"] + chat_box["height"] <= said_box["y"], (chat_box, said_box)
        # a line reads across the panel (its words were once wrapped in the time's column)
        reply = await before.locator(".line", has_text=REPLY).bounding_box()
        assert reply is not None and reply["height"] < 40, reply
        await desk.screenshot(path=str(output_dir / "agent-chat-then-call.png"), full_page=True)
        await caller.get_by_test_id("hangup").click()
        await expect(desk.get_by_test_id("wrapup")).to_be_visible(timeout=15_000)
    print(f"chat to call in Chromium: {time.monotonic() - started:.1f} s")
