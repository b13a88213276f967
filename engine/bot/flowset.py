"""The flows the virtual agent answers with: the files of ``CCENGINE_BOT_FLOWS``, and
flows put through the API, kept in the database as overrides (kind ``flow``, the YAML
text as written, so a mistake found later still names its line) that win over the file
of the same id; a flow removed through the API (a file's too) is kept as removed.

Theory of operation
-------------------
A flow put through the API is parsed alone (``FlowError``: its line and reason), then
checked with the rest of the set as it would be (``FlowConflict``: an id, a number or
the default taken twice) before it is saved: the set the agent answers with is always
one the files' own check would pass. The new set is handed to ``on_change`` (the call
manager gives it to the virtual agent, for calls that start from now on, and warms the
new flows' prompts); other engines reload it from the database (engine/changes.py,
kind ``flows``). Two engines saving at once could still make a set that conflicts:
a reload then leaves out the newer flow that does not fit, and logs why. Parsing runs
in a thread: a flow may be 256 KiB of YAML, seconds of pure-Python parsing that must
not hold the calls' event loop.

Flows are kept and listed whether or not the agent is on: only an engine started with
``CCENGINE_BOT_FLOWS`` (an empty folder will do) answers calls with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from engine.bot.flows import Flow, FlowError, FlowText, check_together, parse_flow, read_flows
from engine.events import utcnow
from engine.store.db import Store

log = logging.getLogger(__name__)
FLOW = "flow"  # the kind of override kept in the database (engine/content.py has the others)


def origin(flow_id: str) -> str:
    """Where an API flow's mistakes are said to be: ``api:orders:5: ...``."""
    return f"api:{flow_id}"


class FlowSet:
    def __init__(
        self, store: Store, folder: str | None, on_change: Callable[[list[Flow]], None]
    ) -> None:
        self.store = store
        self.on = folder is not None  # the virtual agent answers calls
        # a file with a mistake stops start-up here, with its line (engine/calls.py)
        self._files = read_flows(folder) if folder is not None else []
        self._changes: dict[str, str | None] = {}  # id -> the API's text (None: removed)
        # id -> the text last parsed and its flow, kept across reloads: a reload
        # parses again only the flows another engine changed
        self._parsed: dict[str, tuple[str, Flow]] = {}
        self.items: list[FlowText] = list(self._files)
        self.on_change = on_change
        self._loaded = False
        # as Content's: a reload's older read must not undo a save made meanwhile
        self._lock = asyncio.Lock()

    @property
    def flows(self) -> list[Flow]:
        return [f.flow for f in self.items]

    def get(self, flow_id: str) -> FlowText | None:
        return next((f for f in self.items if f.flow.id == flow_id), None)

    async def load(self) -> None:
        """The API's flows kept in the database, at start and when another engine
        changed one (engine/changes.py); the set is rebuilt only if they differ."""
        async with self._lock:
            rows = await self.store.overrides(FLOW)  # oldest first
            changes = {r.name: _text(r.config) for r in rows}
            if changes == self._changes and self._loaded:
                return
            self.items = await asyncio.to_thread(self._build, changes)
            self._changes, self._loaded = changes, True
        self.on_change(self.flows)

    def _build(self, changes: dict[str, str | None]) -> list[FlowText]:
        by_id = {f.flow.id: f for f in self._files}
        parsed: dict[str, tuple[str, Flow]] = {}
        for name, text in changes.items():
            if text is None:
                by_id.pop(name, None)
                continue
            where = origin(name)
            try:
                kept, flow = self._parsed.get(name, (None, None))
                if kept != text or flow is None:
                    flow = parse_flow(text, where, flow_id=name)
                parsed[name] = text, flow
                tried = {**by_id, name: FlowText(flow, text, where, "api")}
                check_together(tried.values())
            except FlowError as exc:  # kept by an older version, or by two engines at once
                log.error("flow %s in the database is left out: %s", name, exc)
                continue
            by_id = tried
        self._parsed = parsed
        return list(by_id.values())

    async def put(self, text: str, flow_id: str, by: str) -> FlowText:
        """Add or replace the API's flow ``flow_id``; ``FlowError`` if the text is not a
        flow named so, ``FlowConflict`` if the set would not answer together."""
        flow = await asyncio.to_thread(parse_flow, text, origin(flow_id), flow_id=flow_id)
        added = FlowText(flow, text, origin(flow_id), "api")
        async with self._lock:
            items = [added if f.flow.id == flow_id else f for f in self.items]
            if self.get(flow_id) is None:
                items.append(added)
            check_together(items)
            await self._save(flow_id, text, by, items)
            self._parsed[flow_id] = text, flow
        self.on_change(self.flows)
        return added

    async def remove(self, flow_id: str, by: str) -> bool:
        """Remove ``flow_id``, the API's or the file's; False if there is none."""
        async with self._lock:
            if self.get(flow_id) is None:
                return False
            await self._save(flow_id, None, by, [f for f in self.items if f.flow.id != flow_id])
            self._parsed.pop(flow_id, None)
        self.on_change(self.flows)
        return True

    async def _save(
        self, flow_id: str, text: str | None, by: str, items: Iterable[FlowText]
    ) -> None:
        config = None if text is None else {"yaml": text}
        await self.store.save_override(FLOW, flow_id, config, by, utcnow())
        self._changes[flow_id], self.items = text, list(items)
        log.info("flow %s %s by %s", flow_id, "removed" if text is None else "saved", by)


def _text(config: dict[str, object] | None) -> str | None:
    """The YAML a row keeps; None: removed. A row of any other shape reads as no flow,
    and is left out with the reason, not taken for a removal."""
    if config is None:
        return None
    text = config.get("yaml")
    return text if isinstance(text, str) else ""
