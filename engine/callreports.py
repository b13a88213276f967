"""Call reports: finished calls added up by queue, agent, day (or one row per call), and
their CSV. Pure: the rows come in as plain data (engine/api/reports.py reads them).

    figure                 over
    calls                  every ended call of the period
    escalated              calls an escalation rule (or the menu) sent to a person; not
                           outbound calls placed to a queue or agent
    abandoned              calls offered to a person (escalated, or dialled to an agent
                           directly) that the caller left before an agent took them; not
                           those that chose a callback, nor those an engine's stop or
                           loss ended (ABANDON_EXCEPT)
    callbacks              calls that ended with the caller choosing a callback
    analysed               calls with analytics; every average below is over these
    avg_handle_seconds     start to end plus wrap-up; and its split: queue, bot, agent,
                           hold, wrap-up
    caller_talk_share      the caller's part of all talk (agent and bot the rest), mean
                           over voice calls where anyone spoke (chats have no talk time)
    avg_non_talk_seconds   dead air (nobody spoke, not queued, not on hold), and the
                           longest stretch: means over voice calls
    interruptions          by the caller and by the agent, summed (the bot's lines have
                           estimated lengths: not counted)
    categories             calls in each category

A call is the agent's who took it last (``calls.agent_id``): a transferred call's whole
handle time, agent part included, counts for the last agent in the agent grouping.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

Group = Literal["queue", "agent", "day", "call"]
NONE_KEY = "(none)"
SPLIT = ("queue", "bot", "agent", "hold", "wrap_up")
CALLBACK = "callback_requested"
# ends that are not the caller's doing: the engine stopped, or was lost (the names
# engine/recovery.py and engine/calls.py give them, old and new)
ABANDON_EXCEPT = frozenset(
    {CALLBACK, "engine_shutdown", "engine_restart", "engine_lost", "node_lost"}
)


def is_outbound(escalation_reason: str | None) -> bool:
    """A call placed by the engine (engine/calls.py ``connect_outbound`` says why)."""
    return (escalation_reason or "").startswith("outbound call placed by")


def is_direct(escalation_reason: str | None) -> bool:
    """A caller who dialled an agent directly (engine/calls.py says "dialled X directly")."""
    reason = escalation_reason or ""
    return reason.startswith("dialled ") and reason.endswith(" directly")


@dataclass(frozen=True, slots=True)
class Figures:
    """One call's analytics columns (engine.store.models.CallAnalyticsRow)."""

    handle: float
    split: tuple[float, float, float, float, float]  # in SPLIT's order
    caller_talk: float | None  # None: a chat (no talk time); left out of the means
    agent_talk: float | None
    non_talk: float | None
    longest_non_talk: float | None
    caller_interruptions: int
    agent_interruptions: int
    categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallFacts:
    id: str
    created_at: datetime
    queue: str | None
    agent: str | None  # username
    escalated: bool  # sent to a person by a rule or the menu (not an outbound call)
    reached_agent: bool
    disposition: str | None
    figures: Figures | None  # None: not analysed
    direct: bool = False  # dialled to an agent directly
    end_reason: str | None = None

    @property
    def abandoned(self) -> bool:
        offered = self.escalated or self.direct
        return offered and not self.reached_agent and self.end_reason not in ABANDON_EXCEPT


class ReportRow(BaseModel):
    key: str
    calls: int
    escalated: int
    abandoned: int
    callbacks: int
    analysed: int
    avg_handle_seconds: float | None
    avg_split_seconds: dict[str, float | None]
    caller_talk_share: float | None
    avg_non_talk_seconds: float | None
    avg_longest_non_talk_seconds: float | None
    caller_interruptions: int
    agent_interruptions: int
    categories: dict[str, int]
    # one call's own facts (group=call only)
    started_at: datetime | None = None
    queue: str | None = None
    agent: str | None = None
    disposition: str | None = None
    end_reason: str | None = None


@dataclass
class _Sum:
    calls: int = 0
    escalated: int = 0
    abandoned: int = 0
    callbacks: int = 0
    analysed: int = 0
    handle: float = 0.0
    split: list[float] = field(default_factory=lambda: [0.0] * len(SPLIT))
    share: float = 0.0
    shared: int = 0  # calls where anyone spoke
    non_talk: float = 0.0
    longest: float = 0.0
    voiced: int = 0  # calls with non-talk figures (not chats)
    caller_cuts: int = 0
    agent_cuts: int = 0
    categories: dict[str, int] = field(default_factory=dict)

    def add(self, c: CallFacts) -> None:
        self.calls += 1
        self.escalated += c.escalated
        self.abandoned += c.abandoned
        self.callbacks += c.end_reason == CALLBACK
        f = c.figures
        if f is None:
            return
        self.analysed += 1
        self.handle += f.handle
        self.split = [a + b for a, b in zip(self.split, f.split, strict=True)]
        if f.caller_talk is not None and f.agent_talk is not None:
            if f.caller_talk + f.agent_talk > 0:
                self.shared += 1
                self.share += f.caller_talk / (f.caller_talk + f.agent_talk)
        if f.non_talk is not None:
            self.voiced += 1
            self.non_talk += f.non_talk
            self.longest += f.longest_non_talk or 0.0
        self.caller_cuts += f.caller_interruptions
        self.agent_cuts += f.agent_interruptions
        for name in set(f.categories):
            self.categories[name] = self.categories.get(name, 0) + 1

    def row(self, key: str) -> ReportRow:
        n = self.analysed

        def avg(total: float, count: int = n) -> float | None:
            return round(total / count, 3) if count else None

        return ReportRow(
            key=key,
            calls=self.calls,
            escalated=self.escalated,
            abandoned=self.abandoned,
            callbacks=self.callbacks,
            analysed=n,
            avg_handle_seconds=avg(self.handle),
            avg_split_seconds={p: avg(s) for p, s in zip(SPLIT, self.split, strict=True)},
            caller_talk_share=avg(self.share, self.shared),
            avg_non_talk_seconds=avg(self.non_talk, self.voiced),
            avg_longest_non_talk_seconds=avg(self.longest, self.voiced),
            caller_interruptions=self.caller_cuts,
            agent_interruptions=self.agent_cuts,
            categories=dict(sorted(self.categories.items())),
        )


def key_of(c: CallFacts, group: Group) -> str:
    if group == "queue":
        return c.queue or NONE_KEY
    if group == "agent":
        return c.agent or NONE_KEY
    if group == "day":
        return c.created_at.date().isoformat()
    return c.id


def report(calls: Iterable[CallFacts], group: Group) -> tuple[list[ReportRow], ReportRow]:
    """The rows, by key (days in order, calls by start), and the total of them all."""
    sums: dict[str, _Sum] = {}
    total = _Sum()
    first: dict[str, CallFacts] = {}
    for c in calls:
        key = key_of(c, group)
        sums.setdefault(key, _Sum()).add(c)
        first.setdefault(key, c)
        total.add(c)
    if group != "call":
        return [sums[k].row(k) for k in sorted(sums)], total.row("total")
    rows = []
    for k in sorted(sums, key=lambda k: first[k].created_at):
        c = first[k]
        rows.append(
            sums[k].row(k).model_copy(
                update={"started_at": c.created_at, "queue": c.queue, "agent": c.agent,
                        "disposition": c.disposition, "end_reason": c.end_reason}
            )
        )  # fmt: skip
    return rows, total.row("total")


CALL_COLUMNS = ("started_at", "queue", "agent", "disposition", "end_reason")  # group=call
COLUMNS = (
    "key", "calls", "escalated", "abandoned", "callbacks", "analysed", "avg_handle_seconds",
    *(f"avg_{p}_seconds" for p in SPLIT), "caller_talk_share", "avg_non_talk_seconds",
    "avg_longest_non_talk_seconds", "caller_interruptions", "agent_interruptions",
    "categories",
)  # fmt: skip


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # a cell a spreadsheet would run as a formula (CSV injection) is quoted as text
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(rows: Iterable[ReportRow], group: str) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    own = CALL_COLUMNS if group == "call" else ()
    w.writerow([group if c == "key" else c for c in COLUMNS[:1] + own + COLUMNS[1:]])
    for r in rows:
        cats = ";".join(f"{k}={v}" for k, v in r.categories.items())
        facts = [
            r.started_at.isoformat() if r.started_at else None, r.queue, r.agent,
            r.disposition, r.end_reason,
        ][: len(own)]  # fmt: skip
        values = [
            r.key, *facts, r.calls, r.escalated, r.abandoned, r.callbacks, r.analysed,
            r.avg_handle_seconds,
            *(r.avg_split_seconds[p] for p in SPLIT), r.caller_talk_share,
            r.avg_non_talk_seconds, r.avg_longest_non_talk_seconds, r.caller_interruptions,
            r.agent_interruptions, cats,
        ]  # fmt: skip
        w.writerow([_cell(v) for v in values])
    return out.getvalue()
