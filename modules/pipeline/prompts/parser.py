"""The text side of the prompt language: comments, prompt editing, alternation, AND, BREAK, extra-network tags.

Everything here is a pure function over strings; the encoder turns the resulting texts into conditioning.
Emphasis weights `(a:1.2)` / `[a]` are left in the texts: they belong to the encoder's attention parser.

Prompt editing and alternation follow AUTOMATIC1111's grammar (its `schedule_parser`):

    start:      (prompt | stray `[` `]` `(` `)` `:` characters)*
    prompt:     (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled:  "[" [prompt ":"] prompt ":" [ws] NUMBER [ws] "]"
    alternate:  "[" prompt ("|" [prompt])+ "]"
    plain:      ([^\\[]():|] | \\ followed by any character but a newline)+

A prompt the grammar rejects (a `|` outside an alternation, a lone trailing backslash) is used as-is for every step.

A1111 parses this with lark's Earley parser. Inside brackets the grammar leaves no choice (brackets must
balance), so only the top level needs a decision: a `[` or `(` that starts a complete construct is that
construct, otherwise it is a literal character. That makes a small recursive-descent parser enough, and saves a
dependency that would be used for this one grammar. (Where stray brackets sit right next to a construct, lark's
ambiguity resolution depends on Python's per-process string hashing, so A1111's own result for such prompts
changes from launch to launch; this parser always takes the construct, which is one of those results.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

# ----------------------------------------------------------------------------------------------------------------
# Comments


def strip_comments(text: str) -> str:
    """Remove `#` comments the way A1111's "Enable comments" option does.

    A line that is entirely a comment disappears (its newline with it); a comment after text is cut up to the end
    of the line, leaving the text (and its trailing spaces) followed by a newline.
    """
    text = re.sub(r"(^|\n)#[^\n]*(\n|$)", "\n", text)
    return re.sub(r"#[^\n]*(\n|$)", "\n", text)


# ----------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: parse tree


@dataclass(frozen=True)
class Scheduled:
    """`[before:after:when]`; `before` is None for `[after:when]`."""

    before: tuple["Node", ...] | None
    after: tuple["Node", ...]
    when: str  # the number as written: whether it has a decimal point decides fraction vs step


@dataclass(frozen=True)
class Alternate:
    """`[a|b|c]`: option (step - 1) % len(options) at each step."""

    options: tuple[tuple["Node", ...], ...]


Node = Union[str, Scheduled, Alternate]

_SPECIAL = set("\\[]():|")
# lark's common SIGNED_NUMBER, optionally surrounded by whitespace, then the closing bracket
_WHEN = re.compile(r"\s*([+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+))\s*\]")


class PromptSyntaxError(ValueError):
    """The prompt cannot be read as prompt-editing syntax (it is then used literally)."""


class _Parser:
    def __init__(self, text: str):
        self.text = text

    def char(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def plain(self, pos: int) -> int:
        """End of the run of ordinary characters (and escapes) starting at pos."""
        text = self.text
        while pos < len(text):
            if text[pos] == "\\":
                # an escape takes any next character but a newline (lark's `\\.`); otherwise nothing parses
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    raise PromptSyntaxError(f"lone backslash at {pos}")
                pos += 2
            elif text[pos] in _SPECIAL:
                break
            else:
                pos += 1
        return pos

    def sequence(self, pos: int) -> tuple[list[Node], int]:
        """A `prompt`: items up to the first character that cannot continue it."""
        nodes: list[Node] = []
        while pos < len(self.text):
            c = self.text[pos]
            if c not in _SPECIAL or c == "\\":
                end = self.plain(pos)
                nodes.append(self.text[pos:end])
                pos = end
            elif c in "([":
                construct = self.construct(pos)
                if construct is None:
                    break
                parsed, pos = construct
                nodes.extend(parsed)
            else:
                break
        return nodes, pos

    def construct(self, pos: int) -> tuple[list[Node], int] | None:
        if self.text[pos] == "(":
            return self.emphasized_round(pos)
        return self.square(pos)

    def emphasized_round(self, pos: int) -> tuple[list[Node], int] | None:
        first, pos = self.sequence(pos + 1)
        if self.char(pos) == ")":
            return ["(", *first, ")"], pos + 1
        if self.char(pos) != ":":
            return None
        second, pos = self.sequence(pos + 1)
        if self.char(pos) != ")":
            return None
        return ["(", *first, ":", *second, ")"], pos + 1

    def square(self, pos: int) -> tuple[list[Node], int] | None:
        first, pos = self.sequence(pos + 1)
        c = self.char(pos)
        if c == "]":
            return ["[", *first, "]"], pos + 1
        if c == "|":
            options = [tuple(first)]
            while self.char(pos) == "|":
                option, pos = self.sequence(pos + 1)
                options.append(tuple(option))
            if self.char(pos) != "]":
                return None
            return [Alternate(tuple(options))], pos + 1
        if c != ":":
            return None
        when = _WHEN.match(self.text, pos + 1)
        if when:
            return [Scheduled(None, tuple(first), when.group(1))], when.end()
        second, pos = self.sequence(pos + 1)
        if self.char(pos) != ":":
            return None
        when = _WHEN.match(self.text, pos + 1)
        if not when:
            return None
        return [Scheduled(tuple(first), tuple(second), when.group(1))], when.end()

    def start(self) -> list[Node]:
        nodes: list[Node] = []
        pos = 0
        while pos < len(self.text):
            parsed, pos = self.sequence(pos)
            nodes.extend(parsed)
            if pos < len(self.text):
                c = self.text[pos]
                if c == "|":
                    raise PromptSyntaxError(f"'|' outside [a|b] at {pos}")
                nodes.append(c)  # a bracket or colon that starts nothing complete is literal text
                pos += 1
        return nodes


def parse_schedule_syntax(prompt: str) -> list[Node]:
    """Parse tree of the prompt-editing/alternation syntax; raises PromptSyntaxError where A1111's parser fails."""
    try:
        return _Parser(prompt).start()
    except RecursionError:
        # Hundreds of nested brackets: not a prompt anyone writes; using it literally beats failing the request.
        raise PromptSyntaxError("brackets nested too deeply") from None


# ----------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: schedules


@dataclass(frozen=True)
class _Timeline:
    """How a `when` number maps to a step of the pass being scheduled."""

    steps: int
    int_offset: int
    float_offset: float
    old_scheduling: bool

    def step_of(self, when: str) -> int:
        value = float(when)
        if self.old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in when:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        # A1111 would crash on an infinite value (int(inf)); clamping keeps its meaning ("never"/"always").
        value = max(min(value, float(self.steps)), -1.0)
        return min(self.steps, int(value))


def _switch_steps(nodes: tuple[Node, ...] | list[Node], timeline: _Timeline, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, Scheduled):
            step = timeline.step_of(node.when)
            if step >= 1:
                found.add(step)
            if node.before is not None:
                _switch_steps(node.before, timeline, found)
            _switch_steps(node.after, timeline, found)
        elif isinstance(node, Alternate):
            found.update(range(1, timeline.steps + 1))
            for option in node.options:
                _switch_steps(option, timeline, found)


def _text_at(nodes: tuple[Node, ...] | list[Node], step: int, timeline: _Timeline) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, Scheduled):
            if step <= timeline.step_of(node.when):
                if node.before is not None:
                    parts.append(_text_at(node.before, step, timeline))
            else:
                parts.append(_text_at(node.after, step, timeline))
        else:
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, timeline))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    use_old_scheduling: bool = False) -> list[tuple[int, str]]:
    """[(end_at_step, text)] for one prompt; the text applies to every step up to and including end_at_step.

    With `hires_steps` the schedule is for the hires pass (steps 1..hires_steps): an integer `when` counts from
    the start of the first pass (so it is offset by `steps`) and a fraction 1.0-2.0 addresses the hires pass.
    `use_old_scheduling`: A1111's old rule (a value below 1 is a fraction, otherwise a step; no hires timeline).
    """
    if hires_steps is None or use_old_scheduling:
        timeline = _Timeline(steps, 0, 0.0, use_old_scheduling)
    else:
        timeline = _Timeline(hires_steps, steps, 1.0, False)
    try:
        nodes = parse_schedule_syntax(prompt)
    except PromptSyntaxError:
        return [(timeline.steps, prompt)]
    found = {timeline.steps}
    _switch_steps(nodes, timeline, found)
    return [(step, _text_at(nodes, step, timeline)) for step in sorted(found)]


def get_learned_conditioning_prompt_schedules(prompts: list[str], steps: int, hires_steps: int | None = None,
                                              use_old_scheduling: bool = False) -> list[list[tuple[int, str]]]:
    """A1111's function of the same name: one schedule per prompt (see prompt_schedule)."""
    cache: dict[str, list[tuple[int, str]]] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = prompt_schedule(prompt, steps, hires_steps, use_old_scheduling)
    return [list(cache[prompt]) for prompt in prompts]


# ----------------------------------------------------------------------------------------------------------------
# AND (composable diffusion) and BREAK

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_BREAK = re.compile(r"\bBREAK\b")


def parse_and(prompt: str) -> list[tuple[str, float]]:
    """Split a positive prompt on `AND`; each part may end with `:weight` (default 1.0).

    Texts keep their leading whitespace, as in A1111 (the weight regex only trims the end).
    """
    parts = []
    for subprompt in _AND.split(prompt):
        match = _WEIGHT.search(subprompt)
        text, weight = match.groups() if match else (subprompt, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's function: per prompt [(index into flat list, weight)], the flat list of distinct texts, text->index."""
    indexes_per_prompt: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for text, weight in parse_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        indexes_per_prompt.append(indexes)
    return indexes_per_prompt, flat, index_of


def split_break(text: str) -> list[str]:
    """Split on uppercase `BREAK` (a whole word): each piece starts a new 75-token chunk in the encoder."""
    return _BREAK.split(text)


# ----------------------------------------------------------------------------------------------------------------
# Extra-network tags: <kind:name:arg:...>

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkCall:
    """One `<kind:name:args...>` tag. `args` are the items after the name, as written; items of the form
    `key=value` (exactly one `=`) also appear in `named`, the others in `positional`."""

    kind: str
    name: str
    args: tuple[str, ...] = ()
    positional: tuple[str, ...] = field(default=(), compare=False)
    named: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def _call_from_tag(kind: str, body: str) -> ExtraNetworkCall:
    name, *args = body.split(":")
    positional, named = [], {}
    for item in args:
        key_value = item.split("=")
        if len(key_value) == 2:
            named[key_value[0]] = key_value[1]
        else:
            positional.append(item)
    return ExtraNetworkCall(kind, name, tuple(args), tuple(positional), named)


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkCall]]:
    """Remove every `<kind:name[:args]>` tag from the prompt (leaving surrounding text as it was) and list them."""
    calls: list[ExtraNetworkCall] = []

    def take(match: re.Match) -> str:
        calls.append(_call_from_tag(match.group(1), match.group(2)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), calls


# ----------------------------------------------------------------------------------------------------------------
# Everything together, for the encoder


@dataclass(frozen=True)
class ConditioningStep:
    """Conditioning in force for steps up to and including `end_at_step`: AND-parts as (text, weight)."""

    end_at_step: int
    parts: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ConditioningSchedule:
    steps: tuple[ConditioningStep, ...]

    def distinct_texts(self) -> list[str]:
        """Every text the encoder has to encode, once each, in first-use order."""
        seen: dict[str, None] = {}
        for step in self.steps:
            for text, _ in step.parts:
                seen.setdefault(text, None)
        return list(seen)

    def at_step(self, step: int) -> ConditioningStep:
        """The entry for a 1-based sampling step (the last one past the end)."""
        for entry in self.steps:
            if step <= entry.end_at_step:
                return entry
        return self.steps[-1]


def schedule_for(prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False,
                 negative: bool = False) -> ConditioningSchedule:
    """Per-step AND-parts of one prompt (comments and extra-network tags already removed by the caller).

    As in A1111 the positive prompt is split on AND first and each part is scheduled on its own (so an AND inside
    brackets splits the brackets too); the result merges the parts' switch points. A negative prompt is not split
    on AND: it is one part of weight 1.
    """
    subprompts = [(prompt, 1.0)] if negative else parse_and(prompt)
    part_schedules = [(prompt_schedule(text, steps, hires_steps, use_old_scheduling), weight)
                      for text, weight in subprompts]
    ends = sorted({end for schedule, _ in part_schedules for end, _ in schedule})
    entries = []
    for end in ends:
        parts = tuple((next(text for part_end, text in schedule if end <= part_end), weight)
                      for schedule, weight in part_schedules)
        entries.append(ConditioningStep(end, parts))
    return ConditioningSchedule(tuple(entries))
