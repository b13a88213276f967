"""What the engine judges and suggests with: escalation rules and knowledge-base
articles. Both come from files at start (``CCENGINE_ESCALATION_RULES``,
``CCENGINE_KNOWLEDGE_BASE``) and change through the API; a change is kept in the
database and wins over the files, across restarts, like queue changes do (they
share the table).

A new rule set applies to calls that start afterwards: a live call keeps the rules it
began with, so its evidence and decisions stay consistent. Article changes reach every
call's next suggestion.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.assist.knowledge import Article, KnowledgeBase, load_articles
from engine.escalation import Rule, load_rules
from engine.events import utcnow
from engine.inputs import lone_surrogate
from engine.store.db import Store

log = logging.getLogger(__name__)
# kinds of override kept in the database (queues are applied by the ACD, in routing.py)
QUEUE, RULE, ARTICLE = "queue", "rule", "article"


class Content:
    def __init__(self, store: Store, rules_file: str | None, kb_folder: str | None) -> None:
        self.store = store
        # a broken rules file stops start-up with the reason, rather than a call later
        self._file_rules = load_rules(rules_file)
        self._file_articles = load_articles(Path(kb_folder)) if kb_folder else []
        self._changes: dict[str, dict[str, dict[str, Any] | None]] = {RULE: {}, ARTICLE: {}}
        self.rules: list[Rule] = list(self._file_rules)
        self.knowledge = KnowledgeBase(self._file_articles)
        self._loaded = False
        # a reload (another engine's change, engine/changes.py) reads the database while
        # this engine may be saving its own: one at a time, or the reload's older read
        # would undo the save here until the next one
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """The changes kept in the database, at start and when another engine made one
        (engine/changes.py); a kind is rebuilt only if its changes differ (the articles'
        search index is rebuilt whole)."""
        async with self._lock:
            for kind in (RULE, ARTICLE):
                changes = {row.name: row.config for row in await self.store.overrides(kind)}
                if changes != self._changes[kind] or not self._loaded:
                    self._changes[kind] = changes
                    self._rebuild(kind)
            self._loaded = True

    def _rebuild(self, kind: str) -> None:
        changes = self._changes[kind]
        if kind == RULE:
            rules = {r.id: r for r in self._file_rules}
            for name, config in changes.items():
                if config is None:
                    rules.pop(name, None)
                    continue
                try:
                    rules[name] = Rule.model_validate({**config, "id": name})
                except ValidationError as exc:  # kept by an older version that let it in
                    log.error("rule %s in the database is not valid, left out: %s", name, exc)
            self.rules = list(rules.values())
        else:
            articles = {a.id: a for a in self._file_articles}
            for name, config in changes.items():
                if config is None:
                    articles.pop(name, None)
                elif lone_surrogate(config):
                    log.error("article %s in the database is not valid Unicode, left out", name)
                else:
                    articles[name] = Article(id=name, **config)
            self.knowledge = KnowledgeBase(list(articles.values()))

    async def _save(self, kind: str, name: str, config: dict[str, Any] | None, by: str) -> None:
        async with self._lock:
            await self.store.save_override(kind, name, config, by, utcnow())
            self._changes[kind][name] = config
            self._rebuild(kind)
        log.info("%s %s %s by %s", kind, name, "removed" if config is None else "saved", by)

    async def put_rule(self, rule: Rule, by: str) -> None:
        await self._save(RULE, rule.id, rule.model_dump(exclude={"id"}), by)

    async def remove_rule(self, rule_id: str, by: str) -> bool:
        if all(r.id != rule_id for r in self.rules):
            return False
        await self._save(RULE, rule_id, None, by)
        return True

    def article(self, article_id: str) -> Article | None:
        return next((a for a in self.knowledge.articles if a.id == article_id), None)

    async def put_article(self, article: Article, by: str) -> None:
        config = {k: v for k, v in asdict(article).items() if k != "id"}
        await self._save(ARTICLE, article.id, config, by)

    async def remove_article(self, article_id: str, by: str) -> bool:
        if self.article(article_id) is None:
            return False
        await self._save(ARTICLE, article_id, None, by)
        return True
