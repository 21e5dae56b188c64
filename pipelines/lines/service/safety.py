"""Safety of the service desk's answers, and personal data kept out of what it stores.

:func:`scrub_pii` replaces names, phone numbers, street addresses and e-mail addresses with typed placeholders
(``[NAME]``, ``[PHONE]``, ``[ADDRESS]``, ``[EMAIL]``), written or spoken ("oh seven seven ...", "anna dot smith at
example dot com"), before any text is stored or logged. Names are found by their cues ("my name is", "this is ...
speaking", "Mrs", a signature after "regards"): a name said without a cue is not found.

:class:`SafetyFilter` decides what happens to an answer before it reaches a customer, the most severe rule winning:

- ``block``: the learned unsafe score of the question and answer reaches the threshold, or a sensitive topic that
  must never be answered: defeating a protective device, working on something live or under pressure, improvised
  wiring, a short-circuited battery or socket, something wet dried by heat, opening or puncturing a battery pack,
  harming people, abusive language in the answer;
- ``escalate`` (to a human): an emergency or injury in the question (gas smell, carbon monoxide, fire, smoke, electric
  shock, a swollen or hissing battery, self-harm), or a hazard that always needs a professional (gas);
- ``warn``: the exchange touches mains voltage, pressurised systems or batteries (the guide's hazards, or the
  words of the question and answer): the answer is sent only with the lockout/tagout warning of each hazard
  (:attr:`SafetyVerdict.warning`, :meth:`SafetyVerdict.message`);
- ``pass``: nothing of the above.

The unsafe score is a logistic regression on the MiniLM embeddings (:mod:`model.text`) of the question and the
answer, side by side, trained by :class:`UnsafeScorer` at first use on the labelled set kept in the repository
(``safety_train.yaml``, 272 exchanges: 19 s on the busy 2-core machine, most of it MiniLM); nothing is downloaded and
no trained artefact is stored.

Defeating a protective device is found by its intent, not by listed sentences: a verb that removes a device (remove,
unscrew, disconnect, get rid of, saw/snap/cut ... off, take/pull/prise ... out) applied to a guard whose removal
leaves the appliance working (relief, safety or unloader valve, cut-out, tip-over switch, interlock, earth pin or
wire, RCD, BMS, flame sensor, thermocouple, pressure switch, CO alarm, flue ...), or a verb that overrides a device
(bypass, disable, jumper, bridge, short out, tape over, wedge, jam, block, cap, screw down, hold down ...) applied to
any protective device, fuses, breakers and thermostats included (taking out a fuse to change it defeats nothing); the
device said to be removed or overridden ("can the relief valve be removed"); a device kept from acting ("... so it
can never trip"); a bigger fuse or breaker. Verbs match in their base, third-person and -ing forms
(:func:`_inflected`), with up to three words between verb and object that are no preposition or conjunction. An
answer's instruction that says "do not", "never" ... before it in its clause is not one (:class:`Topic`).

Example:
    >>> verdict = SafetyFilter().check("my kettle smells of burning", guide.answer(), guide.hazards)
    >>> verdict.action, verdict.message(guide.answer())[:40]
    ('warn', 'Before you start: switch off at the wall')
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

#: The labelled safe/unsafe questions and answers the unsafe score learns from.
DEFAULT_TRAINING_SET = Path(__file__).with_name("safety_train.yaml")
#: Actions from least to most severe; a verdict takes the most severe one any rule asks for.
ACTIONS = ("pass", "warn", "escalate", "block")

# --- personal data ------------------------------------------------------------------------------------------------

_DIGIT_WORDS = r"(?:zero|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple)"
_NUMBER_WORDS = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                 r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|"
                 r"hundred)")
_STREET_TYPES = (r"(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|close|way|court|ct|place|pl|boulevard|blvd|"
                 r"crescent|terrace|gardens|grove|square|sq|hill|park|row|mews|walk|parade)")
#: Cues after which a name follows even in lowercase speech ("my name is anna smith").
_STRONG_NAME_CUES = r"my name is|my name's|call me"
#: Cues after which only a capitalised word is taken for a name ("my son touched it" names nobody).
_WEAK_NAME_CUES = (r"this is|i am|i'm|ask for|speak to|speak with|signed|regards|thanks|thank you|cheers|"
                   r"sincerely|kind regards|"
                   r"my (?:wife|husband|son|daughter|partner|neighbou?r|friend|landlord|mum|mother|dad|father)")
#: Words after a name cue that are not a name.
_NOT_NAMES = frozenset("""a an the and or but so my your our his her their it its this that here there from at in
on with for to of by me us you we they he she i is was be been am are back again later today tomorrow tonight
soon now please someone somebody anyone anybody person human manager engineer technician agent support
calling speaking ringing phoning writing about""".split())
_TITLES = r"(?:mr|mrs|ms|mx|dr|mister|missus)\.?"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SPOKEN_EMAIL = re.compile(r"\b\w+(?:\s+dot\s+\w+)*\s+at\s+\w+(?:\s+dot\s+\w+)*\s+dot\s+"
                           r"(?:com|org|net|co|uk|de|fr|io|edu|gov)\b", re.I)
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s().-]{5,}\d(?![\w.]\d)")
_SPOKEN_PHONE = re.compile(rf"\b{_DIGIT_WORDS}(?:[\s,-]+{_DIGIT_WORDS}){{6,}}\b", re.I)
_ADDRESS = re.compile(rf"\b(?:\d{{1,5}}[a-z]?|{_NUMBER_WORDS}(?:[\s-]{_NUMBER_WORDS})*)\s+"
                      rf"(?:[a-z'-]+\s+){{1,3}}{_STREET_TYPES}\b\.?", re.I)
_FLAT = re.compile(r"\b(?:flat|apartment|apt|unit)\s+\d+[a-z]?\b", re.I)
_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b")
_ADDRESS_CUE = re.compile(r"\b(?:i live at|i live on|my address is|address is|you can find me at)\s+([^.;!?\n]+)",
                          re.I)
_NAME_WORDS = r"[A-Za-z][\w'-]*(?:\s+[A-Za-z][\w'-]*){0,2}"
_CAPITALISED_WORDS = r"[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*){0,2}"
_NAMES = (
    re.compile(rf"(?i:\b(?:{_STRONG_NAME_CUES})\b[,:]?\s+)({_NAME_WORDS})"),
    re.compile(rf"(?i:\b(?:{_WEAK_NAME_CUES})\b[,:]?\s+)({_CAPITALISED_WORDS})"),
    re.compile(rf"(?i:\bthis is\s+)({_NAME_WORDS})(?=\s+(?i:speaking|calling|here)\b)"),
    re.compile(rf"(?i:\b{_TITLES}\s+)([A-Za-z][\w'-]*(?:\s+[A-Z][\w'-]*)?)"),
)


def scrub_pii(text: str) -> str:
    """``text`` with e-mail addresses, phone numbers, street addresses and names replaced by ``[EMAIL]``,
    ``[PHONE]``, ``[ADDRESS]`` and ``[NAME]``."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _SPOKEN_EMAIL.sub("[EMAIL]", text)
    text = _ADDRESS_CUE.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + "[ADDRESS]", text)
    text = _ADDRESS.sub("[ADDRESS]", text)
    text = _FLAT.sub("[ADDRESS]", text)
    text = _POSTCODE.sub("[ADDRESS]", text)
    text = _PHONE.sub(lambda m: "[PHONE]" if sum(c.isdigit() for c in m.group(0)) >= 7 else m.group(0), text)
    text = _SPOKEN_PHONE.sub("[PHONE]", text)
    for names in _NAMES:
        text = names.sub(_name_replaced, text)
    return text


def _name_replaced(match: re.Match) -> str:
    """The match with its name words (those before the first word that is no name) replaced by ``[NAME]``."""
    name_end = match.start(1)
    for word in re.finditer(r"\S+", match.group(1)):
        if word.group(0).lower() in _NOT_NAMES:
            break
        name_end = match.start(1) + word.end()
    if name_end == match.start(1):
        return match.group(0)
    return match.string[match.start(0):match.start(1)] + "[NAME]" + match.string[name_end:match.end(0)]


# --- the safety filter --------------------------------------------------------------------------------------------


_CLAUSE_END = re.compile(r"[.;!?\n]")
_NEGATION_WORDS = r"(?:do not|don't|never|not|no|nor|avoid|stop|without)"
_NEGATION = re.compile(rf"\b{_NEGATION_WORDS}\b", re.I)


def _gap(n: int) -> str:
    """Up to ``n`` characters within a clause with no negation in them (the shortest that lets the pattern match)."""
    return rf"(?:(?!\b{_NEGATION_WORDS}\b)[^.;!?\n]){{0,{n}}}?"


@dataclass(frozen=True)
class Topic:
    """A sensitive topic: a pattern looked for in the question or the answer, and what it asks for. An
    ``instruction`` topic of the answer counts only as an instruction: a match whose clause says "do not", "never",
    "avoid" ... before it is ignored."""

    name: str
    action: str
    pattern: re.Pattern
    where: str = "question"  # "question" | "answer"
    instruction: bool = False

    def found(self, question: str, answer: str) -> bool:
        """Whether the topic comes up in the exchange."""
        text = question if self.where == "question" else answer
        if not self.instruction:
            return bool(self.pattern.search(text))
        for match in self.pattern.finditer(text):
            clause_start = max((m.end() for m in _CLAUSE_END.finditer(text, 0, match.start())), default=0)
            if not _NEGATION.search(text, clause_start, match.start()):
                return True
        return False


def _topic(name: str, action: str, pattern: str, where: str = "question", instruction: bool = False) -> Topic:
    return Topic(name, action, re.compile(pattern, re.I), where, instruction)


def _inflected(phrase: str) -> str:
    """``phrase``'s base, third-person and -ing forms as a regex alternation; a phrase of several words inflects its
    first ("cut off" -> ``cut off|cuts off|cutting off``, "tie" -> ``tie|ties|tying``). Past forms are left out on
    purpose: "a blocked flue" describes a fault, "block the flue" asks for one."""
    verb, _, rest = phrase.partition(" ")
    if verb.endswith("ie"):
        ing = verb[:-2] + "ying"
    elif verb.endswith("e") and not verb.endswith("ee"):
        ing = verb[:-1] + "ing"
    elif re.fullmatch(r"(?:un|re)?[^aeiou]*[aeiou][bdgmnprt]", verb):  # one closed syllable: cut, plug, unplug
        ing = verb + verb[-1] + "ing"
    else:
        ing = verb + "ing"
    third = (verb + "es" if re.search(r"(?:s|sh|ch|x|z)$", verb) else
             verb[:-1] + "ies" if re.search(r"[^aeiou]y$", verb) else verb + "s")
    tail = "".join(rf"\s+{word}" for word in rest.split())
    return rf"(?:{verb}|{third}|{ing}){tail}"


def _verbs(phrases: str) -> str:
    """The inflected forms of ``phrases`` (comma-separated) as one regex alternation."""
    return "(?:" + "|".join(_inflected(p.strip()) for p in phrases.split(",")) + ")"


#: Protective devices whose removal defeats them (the appliance keeps working without them).
_GUARDS = (r"(?:(?:pressure|thermal|temperature|boiler|safety)\s+)?relief\s+valves?|safety\s+valves?|"
           r"unloader(?:\s+valves?)?|(?:thermal\s+|overheat\w*\s+|safety\s+|boil-?dry\s+)?cut[- ]?outs?|"
           r"tip(?:-?over)?\s+switch(?:es)?|(?:lid\s+|door\s+|safety\s+)?interlocks?|"
           r"(?:earth|ground)(?:ing)?\s+(?:pins?|wires?|leads?|prongs?|connections?|terminals?)|"
           r"rcds?|rcbos?|gfcis?|residual\s+current\s+devices?|bms|(?:battery\s+)?management\s+(?:board|system)|"
           r"(?:battery\s+)?protection\s+(?:board|circuit|module|pcb)s?|"
           r"flame\s+(?:sensor|failure\s+device|rod|probe)s?|thermocouples?|(?:air\s+)?pressure\s+switch(?:es)?|"
           r"(?:overheat\w*|boil-?dry)\s+(?:protect\w*|switch(?:es)?|sensors?|cut-?offs?)|steam\s+switch(?:es)?|"
           r"safety\s+(?:switch(?:es)?|devices?|catch(?:es)?|guards?|locks?)|trigger\s+locks?|"
           r"(?:co|carbon\s+monoxide|smoke)\s+(?:alarms?|detectors?)|flues?")
#: Protective devices whose removal cuts the power: defeated only by bridging, holding or over-rating them.
_FAILSAFES = r"(?:thermal\s+)?fuses?|(?:circuit\s+)?breakers?|thermostats?|(?:temperature|thermal)\s+(?:sensor|probe)s?"
_PROTECTIONS = rf"(?:{_GUARDS}|{_FAILSAFES})"
#: Verbs that remove a device, taking an object (remove the ...) or a particle (take ... off); for guards only.
_REMOVING = _verbs("remove, unscrew, disconnect, unplug, get rid of, do away with, cut, snip, saw, break, snap, file, "
                   "drill")
_REMOVING_WITH_PARTICLE = _verbs("take, pull, rip, prise, prize, pry, lever, knock, strip, chop")
#: Verbs that override a device by bridging, holding or blocking it; for every protective device.
_OVERRIDING = _verbs("bypass, by-pass, override, disable, deactivate, defeat, jumper, jump out, bridge, short, "
                     "short-circuit, tamper with, tape, glue, wedge, jam, clamp, block, cap, seal, tighten, cover, "
                     "stuff")
_OVERRIDING_WITH_PARTICLE = _verbs("plug, screw, hold, tie, wind, pin, peg, weigh")
_PARTICLE = r"(?<!back\s)(?:off|out|away|down|over|up|open|shut|closed|tight|apart)\b"
#: Up to three words between a verb and its object, none of them a preposition or conjunction ("the pressure").
_OBJECT_GAP = (r"(?:\s+(?!(?:into|in|onto|on|to|from|with|without|through|at|for|by|of|off|out|over|under|back|"
               r"behind|inside|near|across|around|round|and|or|but|so|then|when|while|before|after|if|because|"
               r"until|unless|as|not|never|no)\b)[\w'-]+){0,3}?\s+")


def _acting_on(direct: str, with_particle: str, objects: str) -> str:
    """A verb applied to one of ``objects``: ``direct`` with its object (bypass the rcd), either verb with a
    particle before the object (take out the bms) or after it (saw the earth pin off)."""
    verb = rf"(?:{direct}|(?:{direct}|{with_particle})\s+{_PARTICLE})"
    return (rf"\b{verb}{_OBJECT_GAP}(?:{objects})\b|"
            rf"\b(?:{direct}|{with_particle}){_OBJECT_GAP}(?:{objects})\s+{_PARTICLE}")


_OVERRIDDEN = (r"bypassed|by-passed|overridden|disabled|deactivated|defeated|jumpered|bridged|shorted(?:\s+out)?|"
               r"short-circuited|tampered\s+with")
_REMOVED = (r"removed|unscrewed|disconnected|taken\s+(?:out|off|away)|pulled\s+(?:out|off)|cut\s+(?:out|off|away)|"
            r"sawn\s+off|sawed\s+off|snipped\s+(?:out|off)|broken\s+off|snapped\s+off|got(?:ten)?\s+rid\s+of")
#: The intent of defeating a protective device, in the question or as an instruction of the answer: a verb that
#: removes or overrides it applied to it, the device said to be removed or overridden (can the relief valve be
#: removed), a device kept from acting (... so it can never trip), or a bigger fuse, breaker or valve spring.
_DEFEATING_PROTECTION = "|".join((
    _acting_on(_REMOVING, _REMOVING_WITH_PARTICLE, _GUARDS),
    _acting_on(_OVERRIDING, _OVERRIDING_WITH_PARTICLE, _PROTECTIONS),
    rf"\b(?:{_GUARDS})\s+(?:(?:can|could|should|may|must)\s+)?be\s+(?:just\s+)?(?:{_OVERRIDDEN}|{_REMOVED})\b",
    rf"\b(?:{_FAILSAFES})\s+(?:(?:can|could|should|may|must)\s+)?be\s+(?:just\s+)?(?:{_OVERRIDDEN})\b",
    rf"\b(?:{_PROTECTIONS})\b{_gap(60)}\bso(?:\s+that)?\b{_gap(25)}\b(?:never|cannot|can't|no\s+longer|"
    rf"won't\s+ever|will\s+not\s+ever)\s+(?:\w+\s+)?(?:trip|blow|vent|open|cut\s+out|switch\w*\s+off|turn\w*\s+off|"
    rf"click\w*\s+off)",
    r"\b(?:bigger|larger|higher|stronger|heavier)\s+(?:rated\s+)?(?:fuse|breaker|spring)s?\b",
))
#: Using the appliance without a protective device (an answer's instruction).
_USING_WITHOUT_PROTECTION = (rf"\b{_verbs('use, plug, run, connect, wire')}\b{_gap(50)}\b(?:without|with\s+no|has\s+no|"
                             rf"have\s+no)\s+(?:an?\s+|the\s+|its\s+|any\s+)?(?:{_PROTECTIONS})\b")
_WIRING_TARGETS = (r"(?:mains|sockets?|light\s+fittings?|lighting|fuse\s*box|consumer\s+unit|supply|cells?|terminals?|"
                   r"batter(?:y|ies)|controller|motor|live)")
#: Improvised wiring: wires, bare ends, jump leads or cells connected straight to the mains, a light fitting, cells or
#: terminals; batteries or chargers joined in series or parallel.
_IMPROVISED_WIRING = "|".join((
    rf"\b(?:wire|wires|wiring|hard-?wir\w+|solder\w*|splic\w+|twist\w*|bare\s+(?:wires?|ends?|leads?)|"
    rf"(?:jump|crocodile|alligator|car\s+charger)\s+(?:leads?|clips?|cables?))\b{_gap(40)}\b(?:straight|directly)\s+"
    rf"(?:in|into|onto|on\s+to|to)\b{_gap(25)}\b{_WIRING_TARGETS}\b",
    rf"\b(?:wire|join|connect|solder|link|clip)\w*\b{_gap(40)}\bin\s+(?:series|parallel)\b",
    rf"\b(?:jump\s+leads?|jumper\s+cables?|car\s+battery)\b{_gap(40)}\b(?:batter(?:y|ies)|cells?|terminals?)\b",
    r"\b(?:bayonet|light\s+fitting|lamp\s+socket)\s+adapt[eo]r\b",
))
_METAL = r"(?:spanner|screwdriver|wire|nail|coin|paper\s*clip|knife|key|foil|pliers)"
#: A battery or socket short-circuited: terminals, contacts or cells shorted, touched together or bridged with metal.
_SHORT_CIRCUIT = "|".join((
    rf"\bshort(?:s|ing|-circuit\w*)?\s+(?:out\s+)?(?:the\s+|its\s+|both\s+|two\s+)*(?:battery\s+)?"
    rf"(?:terminals|contacts|poles|cells)\b",
    rf"\b(?:touch|bridge|join|connect|lay|put|hold|push)\w*\b{_gap(25)}\b(?:terminals|contacts|poles|cells|pins)\b"
    rf"{_gap(25)}\b(?:together|with\s+(?:a|an|the)\s+{_METAL})\b",
    rf"\b{_METAL}\b{_gap(20)}\b(?:across|between)\s+(?:the\s+|both\s+|its\s+)?(?:two\s+)?"
    rf"(?:terminals|contacts|poles|pins)\b",
))
_HEAT_SOURCES = (r"(?:fire|fireplace|oven|microwave|radiator|heater|hair\s*-?dryer|hob|stove|heat\s+gun|tumble\s+dryer|"
                 r"boiler)")
#: Something wet dried with heat or with its own power.
_DRIED_BY_HEAT = "|".join((
    rf"\bdr(?:y|ies|ying)\b{_gap(25)}\b(?:by|on|in|near|next\s+to|with|under|over|in\s+front\s+of)\s+"
    rf"(?:the\s+|a\s+|an\s+|your\s+)?{_HEAT_SOURCES}\b",
    rf"\b{_HEAT_SOURCES}\b{_gap(25)}\b(?:to|will|would|until)\s+(?:\w+\s+)?dr(?:y|ies)\b",
    r"\b(?:heat|warmth)\s+(?:will\s+|would\s+|can\s+)?dr(?:y|ies)\b",
    rf"\b(?:switch|turn|plug|charge|run|boil)\w*\b{_gap(30)}\b(?:to|and\s+let)\s+(?:\w+\s+)?(?:dry|blow)\s+"
    r"(?:it|them|the\s+\w+)\s+out\b",
))
#: Tape, glue, foil or a nail on a crack, a fuse, a cable or a plug.
_MAKESHIFT_REPAIR = (r"\b(?:tape|taping|glue|superglue|foil|nail|cable tie|twist)\b[^.;!?]{0,40}\b(?:crack\w*|split|"
                     r"fuse|cable|wires?|leak\w*|case|casing|trigger|switch|pins?|plug)\b|\b(?:crack\w*|split|fuse|"
                     r"cable|wires?|leak\w*|case|casing|trigger)\b[^.;!?]{0,40}\b(?:tape|glue|superglue|foil|"
                     r"cable tie)\b")
_WORKING_LIVE = (r"\b(?:while|with|when)\b[^.?!]{0,25}\b(?:plugged in|switched on|still on|is live|it live|"
                 r"pump is running|under pressure|on the charger)\b|\bwork(?:ing)? (?:on it )?live\b")
_DANGER_WORDS = (r"(?:spark|smok|hot|melt|swell|swollen|shock|crack|leak|soot|smell|burn|tingl|hiss|yellow|bare|"
                 r"bulg|heat|static)")
SENSITIVE_TOPICS: tuple[Topic, ...] = (
    _topic("defeating a protective device", "block", _DEFEATING_PROTECTION),
    _topic("working on it live or under pressure", "block",
           r"\b(?:fix|repair|open|work on|touch|clean|undo|unscrew|take apart|dismantle|rewire)\b[^.?!]{0,40}"
           r"\b(?:while|when|with)\b[^.?!]{0,25}\b(?:plugged in|switched on|still on|live|running|"
           r"under pressure|charging)\b"),
    _topic("instructions that defeat a protective device", "block", _DEFEATING_PROTECTION, where="answer",
           instruction=True),
    _topic("instructions to use it without a protective device", "block", _USING_WITHOUT_PROTECTION, where="answer",
           instruction=True),
    _topic("improvised wiring", "block", _IMPROVISED_WIRING, where="answer", instruction=True),
    _topic("short-circuiting a battery or socket", "block", _SHORT_CIRCUIT),
    _topic("instructions that short-circuit a battery or socket", "block", _SHORT_CIRCUIT, where="answer",
           instruction=True),
    _topic("something wet dried with heat or power", "block", _DRIED_BY_HEAT, where="answer", instruction=True),
    _topic("instructions to work on it live or under pressure", "block", _WORKING_LIVE, where="answer",
           instruction=True),
    _topic("a danger dismissed", "block",
           rf"\b{_DANGER_WORDS}\w*[^.;!?]{{0,40}}\b(?:is|are)\s+(?:normal|fine|harmless|nothing to worry about|"
           rf"not a problem|safe|just static)\b|\b(?:nothing to worry|no need to worry|ignore (?:it|the|them))\b|"
           rf"\b{_DANGER_WORDS}\w*[^.;!?]{{0,30}}\b(?:will not|won't|does not|doesn't|cannot|can't)\s+"
           rf"(?:hurt|harm|matter)\b",
           where="answer", instruction=True),
    _topic("damaged equipment kept in use", "block",
           r"\b(?:keep|carry on|continue|go on)\s+(?:using|riding|charging|boiling|running|spraying|heating)\b|"
           r"\bcarry on\b|\b(?:switch|turn|put) it (?:straight )?back on\b|\bcharge it straight away\b",
           where="answer", instruction=True),
    _topic("charging left unattended", "block",
           r"\bcharg(?:e|es|ing)\s+(?:it\s+|them\s+|the\s+\w+\s+)?(?:overnight|unattended|while\s+(?:you|everyone)\s+"
           r"(?:sleep|are\s+out|are\s+away))\b", where="answer", instruction=True),
    _topic("asking for a makeshift repair", "block", _MAKESHIFT_REPAIR),
    _topic("a makeshift repair", "block", _MAKESHIFT_REPAIR, where="answer", instruction=True),
    _topic("opening a battery pack", "block",
           r"\b(?:open|cut|saw|drill|puncture|crush|rebuild|pierce)\b[^.?!]{0,25}\b(?:battery|pack|cells?)\b"),
    _topic("instructions to open or crush a battery pack", "block",
           rf"\b{_verbs('open, cut, saw, drill, puncture, pierce, crush, squash, flatten, hammer, rebuild')}\s+"
           r"(?:open\s+)?(?:the\s+|its\s+|your\s+|a\s+)?(?:battery\s+)?(?:pack|cells?|battery(?:\s+cas(?:e|ing))?)\b",
           where="answer", instruction=True),
    _topic("harming people", "block",
           r"\b(?:shock|hurt|harm|kill|injure|electrocute|burn|poison)\s+(?:someone|somebody|people|him|her|them|"
           r"my (?:neighbou?r|wife|husband|boss|brother|sister))\b|\b(?:make|get)\b[^.?!]{0,30}\b(?:explode|"
           r"blow up|catch fire|burst)\b|\bbomb\b"),
    _topic("abusive language", "block",
           r"\b(?:idiot|stupid|moron|dumb|shut up|whin(?:e|ing)|nobody cares|loser|pathetic|"
           r"fuck\w*|shit\w*|bloody|genius|einstein|not our problem|tough luck|serves you right|"
           r"deserved? (?:it|this)|get lost|better things to do|pester\w*|moan\w*|use your brain|are you deaf|"
           r"people like you|stop complaining)\b|"
           r"(?<!not )(?<!n't )\byour (?:own )?fault\b", where="answer"),
    _topic("gas smell or carbon monoxide", "escalate",
           r"\b(?:smell\w* (?:of )?gas|gas smell|gas leak\w*|carbon monoxide|co alarm|dizzy|headache)\b"),
    _topic("fire or smoke", "escalate", r"\b(?:on fire|caught fire|fire|flames?|smok(?:e|es|ed|ing|y))\b"),
    _topic("injury or electric shock", "escalate",
           r"\b(?:shock(?:ed)?|electrocut\w*|injur\w*|hospital|ambulance|bleeding|burn(?:ed|t)? (?:my|his|her|"
           r"their|the child's) (?:hand|finger|arm|skin|leg|face))\b|\b(?:child|kid|baby)\b[^.?!]{0,30}"
           r"\b(?:touched|burn\w*|hurt)\b"),
    _topic("damaged lithium battery", "escalate",
           r"(?=.*\b(?:batter(?:y|ies)|pack|cells?)\b).*\b(?:swollen|swell\w*|bulg\w*|hiss\w*|puffed|"
           r"electrolyte)\b"),
    _topic("self-harm", "escalate", r"\b(?:kill myself|suicid\w*|end my life|self[- ]harm|hurt myself)\b"),
)

#: Words that show an exchange touches a hazard even where the caller named none.
HAZARD_WORDS: dict[str, re.Pattern] = {
    "mains": re.compile(r"\b(?:mains|plug(?:s|ged)?|socket|outlet|wir(?:e|es|ing)|cable|fuse|breaker|rcd|"
                        r"volt(?:s|age)?|electric(?:al|ity)?|power (?:base|cord|lead|connector))\b", re.I),
    "gas": re.compile(r"\b(?:gas|boiler|flue|burner|carbon monoxide|pilot light)\b", re.I),
    "pressure": re.compile(r"\b(?:pressure|pressuri[sz]ed|bar|psi|relief valve|pump|lance|hose|trigger)\b", re.I),
    "battery": re.compile(r"\b(?:batter(?:y|ies)|lithium|li-?ion|cells?|charger|charging)\b", re.I),
}
#: The lockout/tagout warning each hazard's answer carries.
LOCKOUT_WARNINGS: dict[str, str] = {
    "mains": "switch off at the wall and pull the plug before any work, and keep the plug in sight or tag it "
             "'do not use' so nobody reconnects it",
    "pressure": "switch off, close the water or air supply and release the stored pressure (squeeze the trigger "
                "with the motor off, then lock it) before undoing any connection; tag it 'do not use'",
    "battery": "disconnect the charger at the wall and take the battery off the device; never open, puncture or "
               "short the pack, and if it is hot, swollen, hissing or smoking keep away and call the fire service",
    "gas": "switch the appliance off and turn off the gas at the meter; only a registered gas engineer may work on "
           "it, and if you smell gas leave the building and call the gas emergency line from outside",
}
#: Hazards an automatic answer never covers: the ticket goes to a person.
ESCALATE_HAZARDS = frozenset({"gas"})


@dataclass(frozen=True)
class SafetyVerdict:
    """What to do with an answer (``action``: pass | warn | escalate | block), why, the learned unsafe score of the
    exchange, and the lockout/tagout warning to send with it (empty when there is none)."""

    action: str
    reasons: list[str] = field(default_factory=list)
    unsafe_score: float = 0.0
    warning: str = ""

    @property
    def delivers(self) -> bool:
        """Whether the answer may go to the customer (with :attr:`warning` in front when there is one)."""
        return self.action in ("pass", "warn")

    def message(self, answer: str) -> str | None:
        """The text to send: the warning, then the answer; None when the answer must not be sent."""
        if not self.delivers:
            return None
        return f"{self.warning}\n\n{answer}" if self.warning else answer


@dataclass(frozen=True)
class SafetyExample:
    """One labelled exchange of a safety set."""

    question: str
    answer: str
    hazards: frozenset[str]
    unsafe: bool


def load_safety_set(path: str | Path) -> list[SafetyExample]:
    """The items of a safety set (a YAML list of ``{q, a, hazards, label: safe|unsafe}``); ValueError naming the
    file and the item for a malformed one."""
    import yaml

    items = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: a safety set is a non-empty YAML list of items")
    examples = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not item.get("q") or not item.get("a") \
                or item.get("label") not in ("safe", "unsafe"):
            raise ValueError(f"{path}: item {number} needs q, a and label safe|unsafe, got {item!r}")
        examples.append(SafetyExample(str(item["q"]), str(item["a"]), frozenset(item.get("hazards") or ()),
                                      item["label"] == "unsafe"))
    return examples


class UnsafeScorer:
    """Probability that an exchange is unsafe: logistic regression on ``[MiniLM(question), MiniLM(answer)]``
    (``(N, 768)``), balanced over the two classes, and the threshold that blocks at most ``max_false_blocks`` of
    the safe examples by their out-of-fold scores (5-fold: each scored by a model that did not see it)."""

    def __init__(self, examples: Sequence[SafetyExample], regularisation: float = 4.0,
                 max_false_blocks: float = 0.05):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        labels = np.array([example.unsafe for example in examples])
        if labels.sum() < 5 or (~labels).sum() < 5:
            raise ValueError("an unsafe score needs at least 5 safe and 5 unsafe examples to learn from")
        features = self.features([e.question for e in examples], [e.answer for e in examples])
        self.model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000)
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        out_of_fold = cross_val_predict(self.model, features, labels, cv=folds, method="predict_proba")[:, 1]
        safe_scores = np.sort(out_of_fold[~labels])[::-1]
        allowed = int(max_false_blocks * len(safe_scores))
        self.threshold = float(np.nextafter(safe_scores[allowed], np.inf))
        self.model.fit(features, labels)

    @staticmethod
    def features(questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """``(N, 768)``: each question's embedding beside its answer's."""
        from model.text import embed_notes

        return np.concatenate([embed_notes(questions), embed_notes(answers)], axis=1)

    def scores(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """``(N,)`` unsafe probabilities in [0, 1]."""
        return self.model.predict_proba(self.features(questions, answers))[:, 1]


@lru_cache(maxsize=4)
def trained_scorer(training_set: Path = DEFAULT_TRAINING_SET) -> UnsafeScorer:
    """The unsafe scorer trained on ``training_set`` (once per process and file)."""
    return UnsafeScorer(load_safety_set(training_set))


class SafetyFilter:
    """Decides whether an answer is sent as it is, sent with a lockout/tagout warning, escalated or blocked;
    ``threshold`` on the unsafe score defaults to the one the scorer chose on its training set."""

    def __init__(self, threshold: float | None = None, training_set: str | Path = DEFAULT_TRAINING_SET,
                 escalate_hazards: Collection[str] = ESCALATE_HAZARDS,
                 topics: Sequence[Topic] = SENSITIVE_TOPICS):
        self.scorer = trained_scorer(Path(training_set))
        self.threshold = self.scorer.threshold if threshold is None else threshold
        self.escalate_hazards = frozenset(escalate_hazards)
        self.topics = tuple(topics)

    def check(self, question: str, answer: str, hazards: Collection[str] = frozenset()) -> SafetyVerdict:
        """The verdict on sending ``answer`` to ``question``; ``hazards`` are those of the guide it comes from (the
        words of the exchange add any it names)."""
        score = float(self.scorer.scores([question], [answer])[0])
        found: list[tuple[str, str]] = []  # (action, reason)
        if score >= self.threshold:
            found.append(("block", f"unsafe score {score:.2f} >= {self.threshold:.2f}"))
        for topic in self.topics:
            if topic.found(question, answer):
                found.append((topic.action, f"sensitive topic: {topic.name} (in the {topic.where})"))
        touched = set(hazards) | {name for name, words in HAZARD_WORDS.items()
                                  if words.search(question) or words.search(answer)}
        for hazard in sorted(touched & self.escalate_hazards):
            found.append(("escalate", f"hazard {hazard}: only a qualified person may do this work"))
        for hazard in sorted(touched - self.escalate_hazards):
            found.append(("warn", f"hazard {hazard}: lockout/tagout warning"))
        action = max((a for a, _ in found), key=ACTIONS.index, default="pass")
        warning = ""
        if touched:
            steps = "; ".join(LOCKOUT_WARNINGS[hazard] for hazard in sorted(touched))
            warning = f"Before you start: {steps}."
        return SafetyVerdict(action, [reason for _, reason in found], score, warning)
