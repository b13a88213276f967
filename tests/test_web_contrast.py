"""The pages' text colours against their backgrounds, as the stylesheet defines them:
every pair reaches WCAG 2's 4.5:1 for normal text.

The failure this guards: the mood badges (white on the mood colours) were 2.75-4.38:1,
unreadable for many people. The axe-core audit (tests/test_pages_browser_e2e.py) sees
only what a page shows when it runs; these pairs include every badge and state a page
may ever show, and a colour changed in app.css that breaks one fails here, in
milliseconds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).parent.parent / "engine" / "web" / "static"
AA = 4.5  # WCAG 2.x SC 1.4.3, text under 18.66 px bold / 24 px
WHITE = "#ffffff"

# stylesheets copied from a library, with the library's own colours: the axe audit
# (tests/test_pages_browser_e2e.py) checks what a page shows of them
VENDORED = {
    "plotly-csp.css": "plotly.js's rules, e.g. its cloud dialog, which nothing here opens",
}
Rules = dict[str, dict[str, str]]  # selector -> property -> value (the last one wins)


def parse_css(text: str) -> Rules:
    """Plain rules (``selector, selector { prop: value; ... }``), also those inside
    @media and @supports; @keyframes and other at-rules are skipped (no text colours).
    The declarations of a selector that appears in several rules are merged in order,
    as the cascade would."""
    rules: Rules = {}
    _parse_into(re.sub(r"/\*.*?\*/", "", text, flags=re.S), rules)
    return rules


def _parse_into(text: str, rules: Rules) -> None:
    at = 0
    while (open_at := text.find("{", at)) != -1:
        prelude = text[at:open_at].strip()
        depth, end = 1, open_at + 1
        while depth:  # the block's matching brace
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        body = text[open_at + 1 : end - 1]
        at = end
        if prelude.startswith("@"):
            if prelude.startswith(("@media", "@supports")):
                _parse_into(body, rules)
            continue
        declarations = {}
        for declaration in body.split(";"):
            if ":" in declaration:
                name, value = declaration.split(":", 1)
                declarations[name.strip()] = value.strip()
        for selector in prelude.split(","):
            rules.setdefault(" ".join(selector.split()), {}).update(declarations)


def colour(value: str, variables: dict[str, str]) -> tuple[int, int, int] | None:
    """``#rgb``/``#rrggbb`` or ``var(--x)`` as RGB; None for anything else (no colour,
    a gradient, a translucent colour that depends on what is under it)."""
    while (m := re.fullmatch(r"var\((--[\w-]+)\)", value.strip())) is not None:
        value = variables[m.group(1)]
    value = value.strip().lower()
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        value = "#" + "".join(c * 2 for c in value[1:])
    if not re.fullmatch(r"#[0-9a-f]{6}", value):
        return None
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance (sRGB)."""

    def linear(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def background(declarations: dict[str, str]) -> str | None:
    return declarations.get("background-color", declarations.get("background"))


APP = parse_css((STATIC / "app.css").read_text())
VARS = {k: v for k, v in APP[":root"].items() if k.startswith("--")}
INK = APP["body"]["color"]
PAGE = background(APP["body"]) or ""
CARD = background(APP[".card"]) or ""


def pairs() -> list[tuple[str, str, str]]:
    """(what, text colour, background) for everything the pages write text with."""
    out: list[tuple[str, str, str]] = [
        ("body text on a card", INK, CARD),
        ("body text on the page", INK, PAGE),
    ]
    # text colours on whatever a page may put them on: cards and the page itself
    for selector in (".note", ".note.warn", ".error", ".line .t", ".line .who",
                     ".line.partial .text", ".line.agent .text", ".fact b"):  # fmt: skip
        for under in (CARD, PAGE):
            out.append((selector, APP[selector]["color"], under))
    out.append((".fact b on a fact", APP[".fact b"]["color"], background(APP[".fact"]) or ""))
    out.append((".fact on a fact", INK, background(APP[".fact"]) or ""))
    header = background(APP["header"]) or ""
    out += [
        ("header", APP["header"]["color"], header),
        ("header a", APP["header a"]["color"], header),
    ]
    # every badge (a mood, a presence): .badge's text on each .badge.<kind>
    badge_ink = APP[".badge"]["color"]
    badges = [s for s in APP if re.fullmatch(r"\.badge\.[\w-]+", s)]
    assert {".badge.neutral", ".badge.positive", ".badge.frustrated", ".badge.angry"} <= set(badges)
    for s in badges:
        out.append((s, APP[s].get("color", badge_ink), background(APP[s]) or ""))
    # every state pill (a call's, an agent's), in a card and in the dark header
    states = [s for s in APP if re.fullmatch(r"\.state(\.[\w-]+)?", s)]
    for s in states:
        under = background(APP[s]) or ""
        out.append((s, APP[s].get("color", INK), under))
        out.append((f"header {s}", APP["header .state"]["color"], under))
    # buttons: their text on their own colour
    for s in ("button", "button.hang", "button.quiet", "header button.quiet"):
        out.append((s, APP[s].get("color", APP["button"]["color"]), background(APP[s]) or ""))
    return out


@pytest.mark.parametrize(("what", "fg", "bg"), pairs(), ids=lambda x: str(x))
def test_text_reaches_four_and_a_half_to_one(what: str, fg: str, bg: str) -> None:
    a, b = colour(fg, VARS), colour(bg, VARS)
    assert a is not None and b is not None, f"{what}: {fg} on {bg} is not a plain colour"
    assert ratio(a, b) >= AA, f"{what}: {fg} on {bg} is {ratio(a, b):.2f}:1"


def test_every_rule_that_sets_both_colours_reaches_it_in_every_stylesheet() -> None:
    """A page's own stylesheet (desk, supervisor, reports, admin) is held to it too,
    wherever a rule says both what the text and what under it is."""
    low = []
    for css in sorted(STATIC.glob("*.css")):
        if css.name in VENDORED:
            continue
        rules = parse_css(css.read_text())
        variables = {
            **VARS,
            **{k: v for k, v in rules.get(":root", {}).items() if k.startswith("--")},
        }
        for selector, d in rules.items():
            fg, bg = d.get("color"), background(d)
            if fg is None or bg is None:
                continue
            a, b = colour(fg, variables), colour(bg, variables)
            if a is not None and b is not None and ratio(a, b) < AA:
                low.append(f"{css.name} {selector}: {ratio(a, b):.2f}:1")
    assert low == []


def test_the_parser_reads_media_and_skips_keyframes() -> None:
    rules = parse_css(
        "/* c */ .a, .b { color: #111; background:#fff }\n"
        "@keyframes k { from { color:#fff } to { color:#000 } }\n"
        "@media (x) { .a { color:#222 } }"
    )
    assert rules == {".a": {"color": "#222", "background": "#fff"},
                     ".b": {"color": "#111", "background": "#fff"}}  # fmt: skip


def test_the_ratio_is_wcags() -> None:
    """The formula against known values: black on white 21:1, #767676 on white the
    lightest grey that passes (4.54:1), #777777 just under (4.48:1)."""
    white, black = (255, 255, 255), (0, 0, 0)
    assert ratio(black, white) == pytest.approx(21.0)
    assert ratio((0x76,) * 3, white) == pytest.approx(4.54, abs=0.01)
    assert ratio((0x77,) * 3, white) == pytest.approx(4.48, abs=0.01)
    assert colour("#fff", {}) == (255, 255, 255)
    assert colour("var(--a)", {"--a": "var(--b)", "--b": "#102030"}) == (16, 32, 48)
