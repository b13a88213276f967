"""Escalation rules and knowledge-base articles: read (read scope) and change
(supervisors, admins, admin keys). Changes are kept and win over the files."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException

from engine.api.auth import Editor, Reader
from engine.api.schemas import ArticleIn, ArticleOut, PathArticle, PathName
from engine.assist.knowledge import Article
from engine.content import Content
from engine.escalation import Rule

router = APIRouter(prefix="/api/v1")


def _content(request: Request) -> Content:
    content: Content = request.app.state.content
    return content


@router.put("/escalation-rules/{rule_id}", response_model=Rule, tags=["escalation"])
async def put_rule(rule_id: PathName, rule: Rule, request: Request, by: Editor) -> Rule:
    """Add or replace a rule (the body's ``id`` must match the path). Calls that start
    from now on are judged by it; live calls keep the rules they began with."""
    if rule.id != rule_id:
        raise HTTPException(422, f"id: the body says {rule.id!r}, the path {rule_id!r}")
    await _content(request).put_rule(rule, by)
    await request.app.state.changes.changed("content")
    return rule


@router.delete("/escalation-rules/{rule_id}", status_code=204, tags=["escalation"])
async def delete_rule(rule_id: PathName, request: Request, by: Editor) -> None:
    if not await _content(request).remove_rule(rule_id, by):
        raise HTTPException(404, f"no rule {rule_id}")
    await request.app.state.changes.changed("content")


def _out(a: Article) -> ArticleOut:
    return ArticleOut(id=a.id, title=a.title, body=a.body, tags=list(a.tags))


@router.get("/knowledge-base/articles", response_model=list[ArticleOut], tags=["knowledge base"])
async def articles(request: Request, _p: Reader) -> list[ArticleOut]:
    """The articles suggested answers come from."""
    return [_out(a) for a in _content(request).knowledge.articles]


@router.get(
    "/knowledge-base/articles/{article_id}", response_model=ArticleOut, tags=["knowledge base"]
)
async def article(article_id: PathArticle, request: Request, _p: Reader) -> ArticleOut:
    found = _content(request).article(article_id)
    if found is None:
        raise HTTPException(404, f"no article {article_id}")
    return _out(found)


@router.put(
    "/knowledge-base/articles/{article_id}", response_model=ArticleOut, tags=["knowledge base"]
)
async def put_article(
    article_id: PathName, body: ArticleIn, request: Request, by: Editor
) -> ArticleOut:
    """Add or replace an article; the next suggestion of every call can use it."""
    a = Article(article_id, body.title, body.body, body.tags)
    await _content(request).put_article(a, by)
    await request.app.state.changes.changed("content")
    return _out(a)


@router.delete("/knowledge-base/articles/{article_id}", status_code=204, tags=["knowledge base"])
async def delete_article(article_id: PathArticle, request: Request, by: Editor) -> None:
    if not await _content(request).remove_article(article_id, by):
        raise HTTPException(404, f"no article {article_id}")
    await request.app.state.changes.changed("content")
