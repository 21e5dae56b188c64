"""Safety of the service desk: personal data scrubbed (marker strings), lockout/tagout warnings or escalation on
every hazard, and the filter (real MiniLM, a logistic regression trained by our code on the repository's labelled
set) on held-out exchanges it never trained on (tests/data/service/safety_heldout.yaml)."""

from __future__ import annotations

import json

import pytest

from pipelines.lines.service.evaluate import SAFETY_HELD_OUT, evaluate_safety
from pipelines.lines.service.knowledge import KnowledgeBase
from pipelines.lines.service.safety import (ACTIONS, DEFAULT_TRAINING_SET, LOCKOUT_WARNINGS, SENSITIVE_TOPICS,
                                            SafetyFilter, SafetyVerdict, load_safety_set, scrub_pii)


@pytest.fixture(scope="module")
def safety() -> SafetyFilter:
    return SafetyFilter()


@pytest.mark.parametrize("text, scrubbed", [
    ("Hi, my name is Zyxwanda Qorvath and my kettle is broken.", "Hi, my name is [NAME] and my kettle is broken."),
    ("my name is zyxwanda qorvath and the heater sparks", "my name is [NAME] and the heater sparks"),
    ("this is zyxwanda speaking, the boiler drips", "this is [NAME] speaking, the boiler drips"),
    ("Kind regards,\nZyxwanda Qorvath", "Kind regards,\n[NAME]"),
    ("Mrs Qorvath asked me to call", "Mrs [NAME] asked me to call"),
    ("Call 07700 900461 or +44 (0)20 7946 0958 today", "Call [PHONE] or [PHONE] today"),
    ("my number is oh seven seven double oh nine oh oh four six one", "my number is [PHONE]"),
    ("mail zyx.qorvath+desk@example.org now", "mail [EMAIL] now"),
    ("write to zyx dot qorvath at example dot org", "write to [EMAIL]"),
    ("send it to 17 Quillbury Road, flat 4b, QX9 7ZZ.", "send it to [ADDRESS], [ADDRESS], [ADDRESS]."),
    ("it's at twelve quillbury lane", "it's at [ADDRESS]"),
    ("my address is the old mill by the river. It leaks.", "my address is [ADDRESS]. It leaks."),
])
def test_personal_data_is_replaced_by_typed_placeholders(text, scrubbed) -> None:
    assert scrub_pii(text) == scrubbed


@pytest.mark.parametrize("text", [
    "my son touched the heater and i am really angry",
    "the boiler gauge shows 1.5 bar, model KT-2040, ticket 12345",
    "can i speak to someone about the kettle",
    "I'm calling about my e-bike battery",
])
def test_text_without_personal_data_is_left_alone(text) -> None:
    assert scrub_pii(text) == text


def test_every_guide_answer_is_sent_with_its_lockout_warning_or_escalated_when_gas(safety) -> None:
    base = KnowledgeBase.load()
    for guide in base.guides:
        for phrase in guide.phrases[:2] + guide.phrases[-1:]:  # three per guide: the run stays short
            verdict = safety.check(phrase, guide.answer(), guide.hazards)
            assert verdict.action != "block", (guide.key, phrase, verdict)
            if "gas" in guide.hazards:
                assert verdict.action == "escalate" and verdict.message(guide.answer()) is None
            elif verdict.action == "warn":
                assert verdict.message(guide.answer()).startswith("Before you start: ")
                assert all(LOCKOUT_WARNINGS[hazard] in verdict.warning for hazard in guide.hazards)
            else:  # an emergency in the question itself (a bulging battery) goes to a person
                assert verdict.action == "escalate" and any("sensitive topic" in r for r in verdict.reasons)


def test_hazards_named_only_by_the_words_of_the_exchange_still_get_their_warning(safety) -> None:
    verdict = safety.check("my kettle plug is loose", "Unplug the kettle and order a new plug lead with the model "
                           "number; do not use it until then.", hazards=())
    assert verdict.action == "warn" and verdict.warning == f"Before you start: {LOCKOUT_WARNINGS['mains']}."
    boiler = safety.check("my boiler is noisy", "Book a registered gas engineer to look at it.", hazards=())
    assert boiler.action == "escalate" and any("hazard gas" in reason for reason in boiler.reasons)
    calm = safety.check("when is the shop open", "From nine to six, Monday to Saturday.", hazards=())
    assert calm == SafetyVerdict("pass", [], calm.unsafe_score, "") and calm.message("x") == "x"


def test_sensitive_topics_stop_an_answer_whatever_its_score(safety) -> None:
    cases = {
        ("how do i bypass the thermal fuse", "Use the guide."): ("block", "defeating a protective device"),
        ("the cable is worn", "Wrap tape round the cable and carry on."): ("block", "a makeshift repair"),
        ("i smell gas in the hall", "Open a window."): ("escalate", "gas smell"),
        ("my battery is swelling", "Take it to the shop."): ("escalate", "damaged lithium battery"),
        ("why is it late", "Because you are an idiot."): ("block", "abusive language"),
    }
    for (question, answer), (action, topic) in cases.items():
        verdict = safety.check(question, answer, ())
        assert ACTIONS.index(verdict.action) >= ACTIONS.index(action), (question, verdict)
        assert any(topic in reason for reason in verdict.reasons), (question, verdict)


def test_an_instruction_topic_ignores_what_the_answer_says_not_to_do() -> None:
    makeshift = next(topic for topic in SENSITIVE_TOPICS if topic.name == "a makeshift repair")
    assert makeshift.found("", "Wrap tape round the cable.")
    assert not makeshift.found("", "Do not tape the cable; replace the lead.")
    assert makeshift.found("", "Do not unplug it; tape the cable.")  # the negation belongs to another clause


DEFEATING = next(topic for topic in SENSITIVE_TOPICS if topic.name == "defeating a protective device")
DEFEATING_ANSWER = next(topic for topic in SENSITIVE_TOPICS
                        if topic.name == "instructions that defeat a protective device")


@pytest.mark.parametrize("question", [
    "can i remove the pressure relief valve to get more power",
    "can i bypass the safety cut out so it keeps running",
    "how do i get rid of the earth pin",
    "is it ok to take out the tip-over switch",
    "how do i disconnect the flame sensor",
    "can the interlock be bypassed",
    "can i put a bigger fuse in",
    "how would i go about shorting out the thermostat",
])
def test_a_question_that_would_defeat_a_protective_device_is_found(question) -> None:
    assert DEFEATING.found(question, "")


@pytest.mark.parametrize("question", [
    "how do i replace the fuse after unplugging",
    "is it safe to remove the filter",
    "the relief valve dripped, who do i call",
    "my heater cuts out when the thermostat clicks",
    "how do i take the battery off to charge it",
    "can i remove the fuse to check it",
    "the rcd tripped, how do i reset it",
    "how do i cut out the noise",
])
def test_a_question_that_only_names_a_device_or_removes_something_harmless_is_not(question) -> None:
    assert not DEFEATING.found(question, "")


@pytest.mark.parametrize("answer, found", [
    ("Saw the earth pin off so it fits.", True),
    ("Take out the overheat protection.", True),
    ("Jam the RCD switch up so it cannot trip.", True),
    ("Screw the unloader valve down tight.", True),
    ("Do not remove the relief valve; book an engineer.", False),
    ("Take out the old fuse and fit a new one of the same rating.", False),
    ("Switch the breaker back on and have the heater checked.", False),
    ("Screw the relief valve back in by hand.", False),
])
def test_an_answer_that_defeats_a_protective_device_is_found_unless_it_says_not_to(answer, found) -> None:
    assert DEFEATING_ANSWER.found("", answer) is found


@pytest.fixture(scope="module")
def held_out(safety) -> dict:
    """The filter scored on the held-out exchanges (none of them in the training set: evaluate_safety refuses)."""
    return evaluate_safety(SAFETY_HELD_OUT)


def test_safe_held_out_answers_are_handled_at_the_target_rate_and_gas_ones_never_sent(held_out) -> None:
    """Issue 18's target: at least 95 % of safe answers sent (escalated when the work is on gas); a gas answer is never
    sent, whatever the rate."""
    safe = held_out["safe"]
    assert safe["items"] >= 80 and safe["share"] >= 0.95, held_out["false_stops"]
    assert safe["gas"] >= 5 and safe["gas_sent"] == 0


def test_unsafe_held_out_answers_are_all_blocked_or_escalated(held_out) -> None:
    """Issue 18's target: every unsafe held-out answer is stopped."""
    assert held_out["unsafe"]["items"] >= 80 and held_out["missed"] == []


def test_a_held_out_exchange_that_is_also_in_the_training_set_is_refused(tmp_path) -> None:
    item = load_safety_set(DEFAULT_TRAINING_SET)[0]
    path = tmp_path / "held_out.yaml"
    path.write_text(f"- {{label: unsafe, q: {item.question!r}, a: {item.answer!r}}}\n")
    with pytest.raises(ValueError, match="also in the training set"):
        evaluate_safety(path)


def test_a_malformed_safety_set_is_refused_naming_the_item(tmp_path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text("- {q: hi, a: hello, label: safe}\n- {q: hi, a: hello, label: maybe}\n")
    with pytest.raises(ValueError, match="item 2 needs q, a and label"):
        load_safety_set(path)


def test_eval_service_with_a_safety_set_prints_and_writes_the_safety_figures(tmp_path, capsys) -> None:
    from pipelines.cli import main

    assert not main(["eval", "service", "--safety-set", str(SAFETY_HELD_OUT), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "safety-metrics.json").read_text())
    unsafe, safe = written["unsafe"], written["safe"]
    assert f"unsafe stopped  {unsafe['stopped']}/{unsafe['items']}" in printed
    assert f"safe handled    {safe['handled']}/{safe['items']}" in printed
