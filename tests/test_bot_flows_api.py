"""The virtual agent's flows changed through the API (engine/api/bot.py,
engine/bot/flowset.py), in-process (tests/controlplane.py): kept, winning over the
files, refused with their line or their conflict, and answering the next call, while a
call already talking keeps the flow it began with."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from engine.bot.flows import MAX_FILE_BYTES
from engine.bot.flowset import FLOW
from engine.events import BotSaid, Subscription, utcnow
from engine.livecall import Call
from tests.controlplane import ControlPlane, phone_call
from tests.test_analysis import final
from tests.test_bot import ORDERS

BILLING = """\
numbers: ['+442071234567']
greeting: Billing.
intents:
  - name: balance
    examples: [my balance]
    say: ok
"""
RETURNS = """\
id: returns
numbers: ["+15550003333"]
greeting: Returns here. What would you like to send back?
intents:
  - name: label
    examples: [I need a return label, send me a label]
    say: A label is on its way.
"""
NEW_GREETING = "Hello from the new orders flow."
YAML = {"content-type": "application/yaml"}


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """An engine whose agent answers with two files: orders (the default) and billing."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "orders.yaml").write_text(ORDERS)
    (folder / "billing.yaml").write_text(BILLING)
    async with ControlPlane(tmp_path / "engine", bot_flows=str(folder)) as plane:
        yield plane


def listed(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return {f["id"]: f["source"] for f in r.json()["flows"]}


def problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = r.json()
    return body


async def test_flows_are_listed_read_put_and_removed_and_outlive_a_restart(
    cp: ControlPlane,
) -> None:
    http = cp.http()
    r = await http.get("/api/v1/bot/flows")
    assert r.json()["on"] is True
    assert r.json()["flows"] == [
        {"id": "billing", "numbers": ["+442071234567"], "intents": ["balance"], "source": "file"},
        {"id": "orders", "numbers": [],
         "intents": ["order_status", "cancel_order", "opening_hours", "person"],
         "source": "file"},
    ]  # fmt: skip
    r = await http.get("/api/v1/bot/flows/orders")
    assert r.status_code == 200 and r.json()["yaml"] == ORDERS
    assert r.json()["flow"]["greeting"] == "Thanks for calling Acme. How can I help?"
    assert r.json()["flow"]["max_failed_turns"] == 2  # every default filled in

    # the API's flow wins over the file of its id; the id may be left to the path
    text = ORDERS.replace("id: orders\n", "").replace(
        "Thanks for calling Acme. How can I help?", NEW_GREETING
    )
    r = await http.put("/api/v1/bot/flows/orders", content=text, headers=YAML)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "api" and r.json()["flow"]["id"] == "orders"
    assert r.json()["yaml"] == text  # as written: its lines are the ones errors name
    # a new one, as JSON
    r = await http.put("/api/v1/bot/flows/returns", json={"yaml": RETURNS})
    assert r.status_code == 200, r.text
    # removing a file's flow hides it
    assert (await http.delete("/api/v1/bot/flows/billing")).status_code == 204
    assert (await http.get("/api/v1/bot/flows/billing")).status_code == 404
    assert (await http.delete("/api/v1/bot/flows/billing")).status_code == 404
    assert (await http.delete("/api/v1/bot/flows/nothing")).status_code == 404

    expected = {"orders": "api", "returns": "api"}
    assert listed(await http.get("/api/v1/bot/flows")) == expected
    assert cp.calls.bot is not None
    assert [f.id for f in cp.calls.bot.flows] == ["orders", "returns"]
    assert cp.calls.bot.flows[0].greeting == NEW_GREETING

    await cp.restart(bot_flows=cp.settings.bot_flows)
    cc = cp.client(api_key=cp.api_key)  # the typed client, as developers use it
    assert {f.id: f.source for f in (await cc.flows()).flows} == expected
    orders = await cc.flow("orders")
    assert orders.flow.greeting == NEW_GREETING and orders.yaml == text
    assert cp.calls.bot is not None and cp.calls.bot.flows[0].greeting == NEW_GREETING
    await cc.delete_flow("returns")
    assert (await cc.put_flow("returns", RETURNS)).source == "api"


@pytest.mark.parametrize(
    ("path", "change", "line", "reason"),
    [
        # a typo in a key: the line of that key, as in a file
        ("orders", ("    examples:\n      - where", "    exmples:\n      - where"), 5, "exmples"),
        # a template naming a slot the intent does not have
        ("orders", ("say: Order {order} is {result", "say: Order {ordr} is {result"), 18, "ordr"),
        # an id that is not the path's: the line of the id
        ("other", ("id: orders", "id: orders"), 1, "its name is 'other'"),
        # not YAML at all
        ("orders", ("url: http://127.0.0.1:9/status", "url: [http"), 17, ""),
    ],
)
async def test_a_flow_with_a_mistake_is_422_with_its_line_and_nothing_changes(
    cp: ControlPlane, path: str, change: tuple[str, str], line: int, reason: str
) -> None:
    http = cp.http()
    old, new = change
    assert old in ORDERS
    r = await http.put(f"/api/v1/bot/flows/{path}", content=ORDERS.replace(old, new), headers=YAML)
    body = problem(r, 422)
    assert body["line"] == line and reason in str(body["reason"])
    assert str(body["detail"]).startswith(f"api:{path}:{line}: ")
    r = await http.get("/api/v1/bot/flows/orders")
    assert r.json()["source"] == "file" and r.json()["yaml"] == ORDERS
    assert (await http.get("/api/v1/bot/flows/other")).status_code == 404


async def test_bodies_that_are_not_a_flow_are_refused(cp: ControlPlane) -> None:
    http = cp.http()
    put = "/api/v1/bot/flows/orders"
    problem(await http.put(put, content=b"greeting: \xff\xfe", headers=YAML), 422)
    assert "yaml" in str(problem(await http.put(put, json={"text": ORDERS}), 422)["detail"])
    # a lone surrogate in JSON is not text anything downstream can keep
    raw = b'{"yaml": "greeting: \\ud800"}'
    problem(await http.put(put, content=raw, headers={"content-type": "application/json"}), 422)
    form = {"content-type": "application/x-www-form-urlencoded"}
    problem(await http.put(put, content=ORDERS, headers=form), 415)
    problem(await http.put("/api/v1/bot/flows/Bad-Id", content=ORDERS, headers=YAML), 422)
    assert (await http.get(put)).json()["source"] == "file"


async def test_a_flow_over_its_bound_is_413_even_when_the_body_limit_is_higher(
    tmp_path: Path,
) -> None:
    """The engine's body limit (CCENGINE_MAX_BODY_BYTES) may be raised for other
    routes; a flow stays bounded by its own (flows.MAX_FILE_BYTES), read no further."""
    async with ControlPlane(tmp_path / "engine", max_body_bytes=8 * MAX_FILE_BYTES) as big:
        http = big.http()
        text = "greeting: " + "x" * MAX_FILE_BYTES + "\n"
        put = "/api/v1/bot/flows/orders"
        for r in (
            await http.put(put, content=text, headers=YAML),
            await http.put(put, json={"yaml": text}),
        ):
            assert "at most 256 KiB" in str(problem(r, 413)["detail"])
        assert listed(await http.get("/api/v1/bot/flows")) == {}
    # with the default limit the engine's own bound answers first, as 413 too
    async with ControlPlane(tmp_path / "default") as plain:
        r = await plain.http().put(put, content=text, headers=YAML)
        problem(r, 413)


async def test_a_flow_that_cannot_answer_with_the_others_is_409(cp: ControlPlane) -> None:
    """The set is checked whole, as the files are at start: a second default flow, or
    a number another flow answers, is refused with the reason; once the other flow is
    gone, the same flow is taken."""
    http = cp.http()
    second_default = ORDERS.replace("id: orders", "id: second")
    body = problem(await http.put("/api/v1/bot/flows/second", content=second_default,
                                  headers=YAML), 409)  # fmt: skip
    assert "second flow without numbers" in str(body["reason"])
    assert str(body["detail"]).startswith("api:second: ")
    taken = RETURNS.replace("+15550003333", "+442071234567")
    body = problem(await http.put("/api/v1/bot/flows/returns", content=taken, headers=YAML), 409)
    assert "'+442071234567' is also answered by" in str(body["reason"])
    assert "billing.yaml" in str(body["reason"])
    assert listed(await http.get("/api/v1/bot/flows")) == {"billing": "file", "orders": "file"}

    assert (await http.delete("/api/v1/bot/flows/billing")).status_code == 204
    r = await http.put("/api/v1/bot/flows/returns", content=taken, headers=YAML)
    assert r.status_code == 200, r.text


async def test_the_list_needs_read_and_a_whole_flow_or_a_change_needs_an_admin(
    cp: ControlPlane,
) -> None:
    """Found in review: a supervisor could point a flow's verification at their own
    server and collect every caller's PIN. Flows are admins', like webhooks; reading
    one whole (its URLs) too. The list is anyone's with read."""
    anonymous = cp.anonymous()
    assert (await anonymous.get("/api/v1/bot/flows")).status_code == 401
    r = await anonymous.put("/api/v1/bot/flows/returns", content=RETURNS, headers=YAML)
    assert r.status_code == 401
    for scope in ("read", "control"):
        key = await cp.new_key(scope, scope)
        http = cp.anonymous(headers={"Authorization": f"Bearer {key}"})
        assert (await http.get("/api/v1/bot/flows")).status_code == 200
        problem(await http.get("/api/v1/bot/flows/orders"), 403)
        r = await http.put("/api/v1/bot/flows/returns", content=RETURNS, headers=YAML)
        problem(r, 403)
        problem(await http.delete("/api/v1/bot/flows/orders"), 403)
    await cp.add_user("sue", "pw-sue-12345", "--role", "supervisor")
    sue = await cp.agent("sue", "pw-sue-12345")
    r = await sue.put("/api/v1/bot/flows/returns", content=RETURNS, headers=YAML)
    problem(r, 403)
    problem(await sue.get("/api/v1/bot/flows/orders"), 403)
    await cp.add_user("ada", "pw-ada-12345", "--role", "admin")
    ada = await cp.agent("ada", "pw-ada-12345")
    r = await ada.put("/api/v1/bot/flows/returns", content=RETURNS, headers=YAML)
    assert r.status_code == 200, r.text
    [row] = await cp.store.overrides(FLOW)
    assert (row.name, row.updated_by, row.config) == ("returns", "ada", {"yaml": RETURNS})


async def said(cp: ControlPlane, sub: Subscription, call: Call) -> str:
    """The next thing the agent says on ``call``."""
    event = await cp.next_event(sub, "bot.said")
    assert isinstance(event, BotSaid) and event.call_id == call.id, event
    return event.text


async def test_a_call_after_a_put_is_answered_by_the_new_flow_a_live_one_keeps_its_own(
    cp: ControlPlane,
) -> None:
    """A flow changed through the API reaches the next call with no restart, on the
    default number and on a number only the new flow answers; a call already talking
    to the agent keeps the flow it began with (changing it mid-call would lose its
    place in the dialog)."""
    http = cp.http()
    old_greeting = "Thanks for calling Acme. How can I help?"
    async with cp.events() as sub:
        before, _ = await phone_call(cp.calls, "+15550001111", dialled="+15550009999")
        assert await said(cp, sub, before) == old_greeting

        text = ORDERS.replace(old_greeting, NEW_GREETING).replace(
            "What is your order number?", "Your order number, please?"
        )
        r = await http.put("/api/v1/bot/flows/orders", content=text, headers=YAML)
        assert r.status_code == 200, r.text
        assert (await http.put("/api/v1/bot/flows/returns", json={"yaml": RETURNS})).is_success

        after, _ = await phone_call(cp.calls, "+15550002222", dialled="+15550009999")
        assert await said(cp, sub, after) == NEW_GREETING
        returns, _ = await phone_call(cp.calls, "+15550004444", dialled="+15550003333")
        assert await said(cp, sub, returns) == "Returns here. What would you like to send back?"

        # the same request on both calls: each answered by its own flow
        for call in (before, after):
            cp.calls._enqueue(call, final(call.caller_leg().id, 0, "where is my order"))
            answer = await said(cp, sub, call)
            assert answer == (
                "What is your order number?" if call is before else "Your order number, please?"
            )
    assert cp.calls.bot is not None
    assert after.bot is not None and after.bot.matcher is cp.calls.bot._matchers["orders"]


async def test_a_kept_flow_that_no_longer_fits_is_left_out_on_reload(
    cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """Two engines saving at once, or a file changed under a kept flow, can leave the
    database with flows that do not answer together, or an older version's row: the
    reload (another engine's change, a restart) leaves out what does not fit, saying
    why, and keeps the rest answering; a broken kept flow does not hide its file."""
    now = utcnow()
    second_default = ORDERS.replace("id: orders", "id: second")
    await cp.store.save_override(FLOW, "second", {"yaml": second_default}, "a", now)
    await cp.store.save_override(FLOW, "orders", {"yaml": "greeting: [unclosed\n"}, "b", now)
    await cp.store.save_override(FLOW, "odd", {"text": "not how flows are kept"}, "c", now)
    await cp.store.save_override(FLOW, "returns", {"yaml": RETURNS}, "d", now)
    with caplog.at_level(logging.ERROR, logger="engine.bot.flowset"):
        await cp.calls.flows.load()
    assert listed(await cp.http().get("/api/v1/bot/flows")) == {
        "billing": "file", "orders": "file", "returns": "api",
    }  # fmt: skip
    left_out = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("second", "orders", "odd"):
        assert f"flow {name} in the database is left out" in left_out
    assert cp.calls.bot is not None
    assert [f.id for f in cp.calls.bot.flows] == ["billing", "orders", "returns"]


async def test_with_the_agent_off_flows_are_kept_and_answer_nobody(tmp_path: Path) -> None:
    """Without CCENGINE_BOT_FLOWS there is no virtual agent: flows put through the API
    are kept (and checked) for when it is on, the list says it is off, and calls get the
    key menu as before."""
    async with ControlPlane(tmp_path / "engine") as plane:
        http = plane.http()
        r = await http.put("/api/v1/bot/flows/returns", content=RETURNS, headers=YAML)
        assert r.status_code == 200, r.text
        r = await http.get("/api/v1/bot/flows")
        assert r.json()["on"] is False and listed(r) == {"returns": "api"}
        assert plane.calls.bot is None
        call, _ = await phone_call(plane.calls, "+15550001111", dialled="+15550003333")
        assert call.bot is None
        # an empty folder switches the agent on, with the flows the API keeps
        (tmp_path / "none").mkdir()
        await plane.restart(bot_flows=str(tmp_path / "none"))
        assert plane.calls.bot is not None
        assert [f.id for f in plane.calls.bot.flows] == ["returns"]


class Voice:
    """A speaker that notes what it was asked to say."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def speak(self, text: str) -> tuple[np.ndarray, int]:
        self.said.append(text)
        return np.zeros(160, np.int16), 16000


async def test_a_new_flows_prompts_are_made_ahead_and_only_those(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The greeting of a flow put through the API is made in the background, like the
    files' at start, so its first caller does not wait for the voice; lines every
    flow shares, made already, are not made again."""
    prompts = cp.calls.prompts
    if prompts._warmup is not None:  # start-up's, with the real voice: not this test's
        prompts._warmup.cancel()
    prompts._to_warm.clear()
    voice = Voice()
    monkeypatch.setattr(prompts, "speaker", voice)
    r = await cp.http().put("/api/v1/bot/flows/returns", content=RETURNS, headers=YAML)
    assert r.status_code == 200, r.text
    assert prompts._warmup is not None
    await prompts._warmup
    assert voice.said == ["Returns here. What would you like to send back?"]
    # several changes at once are made in turn by one task, none lost
    prompts.warm(["one", "two"])
    prompts.warm(["three"])
    await prompts._warmup
    assert voice.said[1:] == ["one", "two", "three"]
