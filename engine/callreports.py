"""Call reports: finished calls added up by queue, agent, day (or one row per call), and
their CSV. Pure: the rows come in as plain data (engine/api/reports.py reads them).

    figure                 over
    calls                  every ended call of the period
    escalated              calls an escalation rule (or the menu) sent to a person
    abandoned              escalated calls no agent took (hung up in the queue, or chose
                           a callback)
    analysed               calls with analytics; every average below is over these
    avg_handle_seconds     start to end plus wrap-up; and its split: queue, bot, agent,
                           hold, wrap-up
    caller_talk_share      the caller's part of all talk (agent and bot the rest), mean
                           over calls where anyone spoke
    avg_non_talk_seconds   silence where nobody spoke; and the longest stretch, mean
    interruptions          by the caller and by the agent (or bot), summed
    categories             calls in each category
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


@dataclass(frozen=True, slots=True)
class Figures:
    """One call's analytics columns (engine.store.models.CallAnalyticsRow)."""

    handle: float
    split: tuple[float, float, float, float, float]  # in SPLIT's order
    caller_talk: float
    agent_talk: float
    non_talk: float
    longest_non_talk: float
    caller_interruptions: int
    agent_interruptions: int
    categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallFacts:
    id: str
    created_at: datetime
    queue: str | None
    agent: str | None  # username
    escalated: bool
    reached_agent: bool
    disposition: str | None
    figures: Figures | None  # None: not analysed


class ReportRow(BaseModel):
    key: str
    calls: int
    escalated: int
    abandoned: int
    analysed: int
    avg_handle_seconds: float | None
    avg_split_seconds: dict[str, float | None]
    caller_talk_share: float | None
    avg_non_talk_seconds: float | None
    avg_longest_non_talk_seconds: float | None
    caller_interruptions: int
    agent_interruptions: int
    categories: dict[str, int]


@dataclass
class _Sum:
    calls: int = 0
    escalated: int = 0
    abandoned: int = 0
    analysed: int = 0
    handle: float = 0.0
    split: list[float] = field(default_factory=lambda: [0.0] * len(SPLIT))
    share: float = 0.0
    shared: int = 0  # calls where anyone spoke
    non_talk: float = 0.0
    longest: float = 0.0
    caller_cuts: int = 0
    agent_cuts: int = 0
    categories: dict[str, int] = field(default_factory=dict)

    def add(self, c: CallFacts) -> None:
        self.calls += 1
        self.escalated += c.escalated
        self.abandoned += c.escalated and not c.reached_agent
        f = c.figures
        if f is None:
            return
        self.analysed += 1
        self.handle += f.handle
        self.split = [a + b for a, b in zip(self.split, f.split, strict=True)]
        if f.caller_talk + f.agent_talk > 0:
            self.shared += 1
            self.share += f.caller_talk / (f.caller_talk + f.agent_talk)
        self.non_talk += f.non_talk
        self.longest += f.longest_non_talk
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
            analysed=n,
            avg_handle_seconds=avg(self.handle),
            avg_split_seconds={p: avg(s) for p, s in zip(SPLIT, self.split, strict=True)},
            caller_talk_share=avg(self.share, self.shared),
            avg_non_talk_seconds=avg(self.non_talk),
            avg_longest_non_talk_seconds=avg(self.longest),
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
    order: dict[str, datetime] = {}
    for c in calls:
        key = key_of(c, group)
        sums.setdefault(key, _Sum()).add(c)
        order.setdefault(key, c.created_at)
        total.add(c)
    keys = sorted(sums, key=lambda k: order[k]) if group == "call" else sorted(sums)
    return [sums[k].row(k) for k in keys], total.row("total")


COLUMNS = (
    "key", "calls", "escalated", "abandoned", "analysed", "avg_handle_seconds",
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
    w.writerow([group if c == "key" else c for c in COLUMNS])
    for r in rows:
        cats = ";".join(f"{k}={v}" for k, v in r.categories.items())
        values = [
            r.key, r.calls, r.escalated, r.abandoned, r.analysed, r.avg_handle_seconds,
            *(r.avg_split_seconds[p] for p in SPLIT), r.caller_talk_share,
            r.avg_non_talk_seconds, r.avg_longest_non_talk_seconds, r.caller_interruptions,
            r.agent_interruptions, cats,
        ]  # fmt: skip
        w.writerow([_cell(v) for v in values])
    return out.getvalue()
