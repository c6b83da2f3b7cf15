"""The prompt language's text side, against AUTOMATIC1111's results (its doctests and its parser's behaviour)."""

import pytest

from modules.pipeline.prompts.parser import (Alternate, ConditioningStep, ExtraNetworkCall, PromptSyntaxError,
                                             Scheduled, extract_extra_networks,
                                             get_learned_conditioning_prompt_schedules, get_multicond_prompt_list,
                                             parse_and, parse_schedule_syntax, schedule_for, split_break,
                                             strip_comments)


def schedule(prompt, steps=10, hires_steps=None, use_old_scheduling=False):
    return [tuple(entry) for entry in
            get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, use_old_scheduling)[0]]


ALTERNATING_10 = [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]

# (prompt, steps, expected schedule)
SCHEDULES = [
    # A1111's doctests
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, ALTERNATING_10),
    ("[fe|]male", 10, [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", 10, [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    # A1111's comment example (100 steps)
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", 100,
     [(25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
      (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
      (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
      (75, "fantasy landscape with a lake and an oak in background masterful"),
      (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),
    # A1111's doctest says [[5, 'a  c'], [10, 'a {b|d{ c']] ("not handling this right now"); its grammar
    # actually rejects the `|` and uses the prompt literally, which is what it does today.
    ("a [{b|d{:.5] c", 10, [(10, "a [{b|d{:.5] c")]),
    # from:to:when, to:when, from::when
    ("a [b:c:5] d", 10, [(5, "a b d"), (10, "a c d")]),
    ("a [b::0.5] c", 10, [(5, "a b c"), (10, "a  c")]),
    ("[a:b:.3]", 10, [(3, "a"), (10, "b")]),
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b:10]", 10, [(10, "a")]),
    ("[a:b:15]", 10, [(10, "a")]),
    ("[a:b:-1]", 10, [(10, "b")]),
    ("[a:b:+2]", 10, [(2, "a"), (10, "b")]),
    ("[a:b:1.0]", 10, [(10, "a")]),  # decimal point: a fraction, 1.0 = the last step
    ("[a:b:2.]", 10, [(10, "a")]),
    ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),  # no decimal point: a step
    ("[a: 3 ]", 10, [(3, ""), (10, "a")]),
    # nesting
    ("[a|[b:c:2]]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
    ("[x:[a|b]:2]", 4, [(1, "x"), (2, "x"), (3, "a"), (4, "b")]),
    ("(a [b:c:2]:1.2)", 10, [(2, "(a b:1.2)"), (10, "(a c:1.2)")]),
    # alternation
    ("[a|b|c]", 5, [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")]),
    ("[|x]", 3, [(1, ""), (2, "x"), (3, "")]),
    ("[a|(b:c)]", 3, [(1, "a"), (2, "(b:c)"), (3, "a")]),
    # escapes stay in the text for the emphasis parser
    (r"\[a:b:2\]", 10, [(10, r"\[a:b:2\]")]),
    (r"a \[b:c:2] d", 10, [(10, r"a \[b:c:2] d")]),
    (r"[a\:b:c:2]", 10, [(2, r"a\:b"), (10, "c")]),
    # stray brackets are text; syntax the grammar rejects leaves the whole prompt literal
    ("((a]]", 10, [(10, "((a]]")]),
    ("[a:b:2] [c:d:3", 10, [(2, "a [c:d:3"), (10, "b [c:d:3")]),
    ("[a|b", 4, [(4, "[a|b")]),
    ("x | y", 4, [(4, "x | y")]),
    ("[a|b] \\", 4, [(4, "[a|b] \\")]),
    ("a\\\nb [c:1]", 4, [(4, "a\\\nb [c:1]")]),
    ("", 10, [(10, "")]),
]


@pytest.mark.parametrize("prompt,steps,expected", SCHEDULES)
def test_schedule_matches_a1111(prompt, steps, expected):
    assert schedule(prompt, steps) == expected


# (prompt, base steps, hires steps, expected hires-pass schedule)
HIRES_SCHEDULES = [
    ("a [b:.5] c", 10, 10, [(10, "a b c")]),  # A1111 doctest: the switch happened in the first pass
    ("a [b:1.5] c", 10, 10, [(5, "a  c"), (10, "a b c")]),  # A1111 doctest: halfway through the hires pass
    ("a [b:15] c", 10, 10, [(5, "a  c"), (10, "a b c")]),  # integers count on from the first pass
    ("a [b:5] c", 10, 10, [(10, "a b c")]),
    ("[a:b:0.5]", 20, 10, [(10, "b")]),
    ("[a:b:25]", 20, 10, [(5, "a"), (10, "b")]),
    ("[a:b:1.25]", 20, 8, [(2, "a"), (8, "b")]),
    ("[a|b]", 10, 3, [(1, "a"), (2, "b"), (3, "a")]),
]


@pytest.mark.parametrize("prompt,steps,hires_steps,expected", HIRES_SCHEDULES)
def test_hires_timeline(prompt, steps, hires_steps, expected):
    assert schedule(prompt, steps, hires_steps) == expected


@pytest.mark.parametrize("prompt,expected", [
    ("[a:b:0.5]", [(5, "a"), (10, "b")]),
    ("[a:b:3]", [(3, "a"), (10, "b")]),
    ("[a:b:3.0]", [(3, "a"), (10, "b")]),  # old rule: only values below 1 are fractions
    ("[a:b:1.5]", [(1, "a"), (10, "b")]),
    ("[a:b:1]", [(1, "a"), (10, "b")]),
])
def test_old_scheduling(prompt, expected):
    assert schedule(prompt, 10, use_old_scheduling=True) == expected
    assert schedule(prompt, 10, hires_steps=10, use_old_scheduling=True) == expected  # no hires timeline


def test_infinite_when_does_not_crash():
    assert schedule("[a:b:1e400]", 10) == [(10, "a")]
    assert schedule("[a:b:-1e400]", 10) == [(10, "b")]


def test_deep_nesting_is_used_literally():
    prompt = "[" * 5000 + "a:1" + "]" * 5000
    assert schedule(prompt) == [(10, prompt)]
    nested = "[" * 50 + "a:1" + "]" * 50  # moderate nesting still parses
    assert schedule(nested) == [(1, "[" * 49 + "]" * 49), (10, "[" * 49 + "a" + "]" * 49)]


def test_schedules_follow_prompt_order_and_repeat_prompts():
    result = get_learned_conditioning_prompt_schedules(["a red crown", "a [blue:green:5] jeweled crown",
                                                        "a red crown"], 20)
    assert result == [[(20, "a red crown")],
                      [(5, "a blue jeweled crown"), (20, "a green jeweled crown")],
                      [(20, "a red crown")]]


def test_parse_tree():
    assert parse_schedule_syntax("a [b:c:0.5] [d|e|]") == [
        "a ", Scheduled(("b",), ("c",), "0.5"), " ", Alternate((("d",), ("e",), ()))]
    assert parse_schedule_syntax("[x:2]") == [Scheduled(None, ("x",), "2")]
    assert parse_schedule_syntax("(a:1.1) [b]") == ["(", "a", ":", "1.1", ")", " ", "[", "b", "]"]
    assert parse_schedule_syntax("a [b:") == ["a ", "[", "b", ":"]
    with pytest.raises(PromptSyntaxError):
        parse_schedule_syntax("a | b")
    with pytest.raises(PromptSyntaxError):
        parse_schedule_syntax("trailing \\")


# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("a cat", "a cat"),
    ("# only a comment", "\n"),
    ("a cat\n# a comment line\nsitting", "a cat\nsitting"),
    ("a cat # tabby\nsitting", "a cat \nsitting"),
    ("a cat #tabby", "a cat \n"),
    ("#first\n#second\nthird", "\n\nthird"),  # the second line is caught by the mid-line rule
    ("a\n\n# x\nb", "a\n\nb"),
    ("color #ff0000 red", "color \n"),
])
def test_strip_comments_like_a1111(text, expected):
    assert strip_comments(text) == expected


@pytest.mark.parametrize("prompt,expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),  # end trimmed, start kept
    ("a cat:1.5 AND a dog : -0.5", [("a cat", 1.5), (" a dog", -0.5)]),
    ("a:2. AND b:.25 AND c:+3", [("a", 2.0), (" b", 0.25), (" c", 3.0)]),
    ("ANDROID ANDx AND y", [("ANDROID ANDx", 1.0), (" y", 1.0)]),
    ("a and b", [("a and b", 1.0)]),
    ("(red:1.2) car  ", [("(red:1.2) car", 1.0)]),
    ("line one\nline two:0.7", [("line one\nline two", 0.7)]),
    ("a AND AND b", [("a", 1.0), ("", 1.0), (" b", 1.0)]),
    ("ratio 16:9", [("ratio 16", 9.0)]),  # as in A1111: a trailing :number is always a weight
])
def test_parse_and(prompt, expected):
    assert parse_and(prompt) == expected


def test_multicond_prompt_list_shares_texts():
    indexes, flat, index_of = get_multicond_prompt_list(["a AND b:2", "b AND c"])
    assert flat == ["a", " b", "b", " c"]
    assert indexes == [[(0, 1.0), (1, 2.0)], [(2, 1.0), (3, 1.0)]]
    assert index_of == {"a": 0, " b": 1, "b": 2, " c": 3}


@pytest.mark.parametrize("text,expected", [
    ("a BREAK b", ["a ", " b"]),
    ("a BREAK b BREAK c", ["a ", " b ", " c"]),
    ("a break b", ["a break b"]),
    ("BREAKFAST", ["BREAKFAST"]),
    ("x\nBREAK\ny", ["x\n", "\ny"]),
])
def test_split_break(text, expected):
    assert split_break(text) == expected


def test_extract_extra_networks():
    prompt, calls = extract_extra_networks("a cat <lora:catStyle:0.8>, <hypernet:anime:1.1:x=y> <lyco:v2:1:te=0.5:unet=0.25>")
    assert prompt == "a cat ,  "
    assert calls == [ExtraNetworkCall("lora", "catStyle", ("0.8",)),
                     ExtraNetworkCall("hypernet", "anime", ("1.1", "x=y")),
                     ExtraNetworkCall("lyco", "v2", ("1", "te=0.5", "unet=0.25"))]
    assert calls[2].named == {"te": "0.5", "unet": "0.25"}
    assert calls[2].positional == ("1",)
    assert calls[1].named == {"x": "y"} and calls[1].positional == ("1.1",)


def test_extract_extra_networks_edge_cases():
    assert extract_extra_networks("no tags <here> or <bad tag:x>") == ("no tags <here> or <bad tag:x>", [])
    prompt, calls = extract_extra_networks("<lora:a=b=c>x<lora:name with spaces:1>")
    assert prompt == "x"
    assert calls[0] == ExtraNetworkCall("lora", "a=b=c", ())
    assert calls[1].name == "name with spaces"
    _, calls = extract_extra_networks("<lora:n:1:a=b=c>")
    assert calls[0].named == {} and calls[0].positional == ("1", "a=b=c")  # A1111: only one '=' makes it named


# ----------------------------------------------------------------------------------------------------------------

def test_schedule_for_merges_and_parts():
    result = schedule_for("a [cat:dog:0.5] AND sun:0.5 AND [day|night]:2", 4)
    assert list(result.steps) == [
        ConditioningStep(1, (("a cat", 1.0), (" sun", 0.5), (" day", 2.0))),
        ConditioningStep(2, (("a cat", 1.0), (" sun", 0.5), (" night", 2.0))),
        ConditioningStep(3, (("a dog", 1.0), (" sun", 0.5), (" day", 2.0))),
        ConditioningStep(4, (("a dog", 1.0), (" sun", 0.5), (" night", 2.0))),
    ]
    assert result.distinct_texts() == ["a cat", " sun", " day", " night", "a dog"]
    assert result.at_step(3).parts[0] == ("a dog", 1.0)
    assert result.at_step(99).end_at_step == 4


def test_schedule_for_plain_prompt_is_one_entry():
    assert schedule_for("a photo of a cat", 20).steps == (ConditioningStep(20, (("a photo of a cat", 1.0),)),)


def test_schedule_for_negative_prompt_does_not_split_and():
    result = schedule_for("blurry AND [ugly:bad:2]:0.5", 4, negative=True)
    assert list(result.steps) == [ConditioningStep(2, (("blurry AND ugly:0.5", 1.0),)),
                                  ConditioningStep(4, (("blurry AND bad:0.5", 1.0),))]


def test_schedule_for_hires_pass():
    result = schedule_for("[a:b:1.5] AND c", 10, hires_steps=4)
    assert [(step.end_at_step, step.parts[0][0]) for step in result.steps] == [(2, "a"), (4, "b")]
