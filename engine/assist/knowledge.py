"""Suggested answers: knowledge-base articles ranked against what the caller just said.

A knowledge base is a folder of articles:
  * Markdown (``*.md``): the first ``# heading`` is the title, the rest the body;
  * YAML (``*.yaml``/``*.yml``): ``title``, ``answer`` (or ``body``), optional ``tags``.
Articles are ranked with BM25 (``bm25s``, Snowball-stemmed English) over title,
tags and body; the query is the caller's last few utterances. Only articles
that share words with the query are suggested. Articles and queries are read with
spoken numbers as digits (``normalize_text``), so "eight three zero one six" and
"83016", "thirty minutes" and "30 minutes" are the same words whichever recognizer
wrote them; case and punctuation the tokenizer drops anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bm25s
import Stemmer
import yaml

from engine.assist.numbers import normalize_text

log = logging.getLogger(__name__)
MAX_ARTICLE_BYTES = 256 * 1024
MAX_ARTICLES = 10_000


@dataclass(frozen=True)
class Article:
    id: str  # file name without extension
    title: str
    body: str
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Suggestion:
    article_id: str
    title: str
    answer: str
    score: float


def _read_markdown(path: Path) -> Article:
    lines = path.read_text(encoding="utf-8").splitlines()
    title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("# ")), path.stem)
    body = "\n".join(ln for ln in lines if not ln.startswith("# ")).strip()
    return Article(path.stem, title, body)


def _read_yaml(path: Path) -> Article:
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not (data.get("answer") or data.get("body")):
        raise ValueError("needs a mapping with 'answer' or 'body'")
    tags = data.get("tags") or []
    return Article(
        path.stem,
        str(data.get("title") or path.stem),
        str(data.get("answer") or data.get("body")),
        [str(t) for t in tags] if isinstance(tags, list) else [str(tags)],
    )


def load_articles(folder: Path | str) -> list[Article]:
    """Every readable article; a broken one is logged and skipped, not fatal."""
    articles = []
    for path in sorted(Path(folder).glob("*")):
        reader = {".md": _read_markdown, ".yaml": _read_yaml, ".yml": _read_yaml}.get(path.suffix)
        if reader is None or not path.is_file():
            continue
        if path.stat().st_size > MAX_ARTICLE_BYTES:
            log.warning("knowledge base: %s is over %d bytes, skipped", path, MAX_ARTICLE_BYTES)
            continue
        try:
            articles.append(reader(path))
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
            log.warning("knowledge base: %s skipped: %s", path, exc)
        if len(articles) >= MAX_ARTICLES:
            break
    return articles


class KnowledgeBase:
    def __init__(self, articles: list[Article]) -> None:
        self.articles = articles
        self._stemmer = Stemmer.Stemmer("english")
        self._index: bm25s.BM25 | None = None
        if articles:
            corpus = [f"{a.title} {a.title} {' '.join(a.tags)} {a.body}" for a in articles]
            tokens = self._tokens(corpus)
            if tokens.vocab:  # bm25s fails on a corpus of stopwords and single letters only
                self._index = bm25s.BM25()
                self._index.index(tokens, show_progress=False)

    @classmethod
    def from_folder(cls, folder: Path | str | None) -> KnowledgeBase:
        return cls(load_articles(folder) if folder else [])

    def _tokens(self, texts: list[str]) -> Any:
        texts = [normalize_text(t) for t in texts]
        return bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)

    def suggest(self, query: str, k: int = 3) -> list[Suggestion]:
        if self._index is None or not query.strip():
            return []
        tokens = self._tokens([query])
        if not any(len(ids) for ids in tokens.ids):
            return []
        docs, scores = self._index.retrieve(
            tokens, k=min(k, len(self.articles)), show_progress=False
        )
        out = []
        for idx, score in zip(docs[0], scores[0], strict=True):
            if score > 0:
                a = self.articles[int(idx)]
                out.append(Suggestion(a.id, a.title, a.body, round(float(score), 4)))
        return out
