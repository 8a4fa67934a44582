"""What callers hear, as text per language, and the sound file each sentence is played from.

The PBX plays ``sound:idcontact/<lang>/<key>``. ``idcontact phone prompts`` renders every key
a configuration needs to WAV files with espeak-ng (good enough for a demo and the tests);
municipalities can record their own files under the same names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

POSITIONS = 11
"""Places up to this (ten callers before you) are said exactly; beyond it "more than ten"."""
WAIT_STEP = 5
WAIT_MAX = 60

FIXED: dict[str, dict[str, str]] = {
    "nl": {
        "welcome": "Welkom bij ID Bellen.",
        "enter-code": "Toets de code die u op uw telefoon of scherm ziet. Hebt u geen code, "
        "blijf dan aan de lijn.",
        "code-ok": "Dank u wel. Uw gegevens staan klaar voor de medewerker.",
        "code-wrong": "Die code kennen we niet, of hij is verlopen. Probeer het nog een keer.",
        "code-final": "Die code werkt niet. U wordt verbonden zonder dat de medewerker uw "
        "gegevens ziet.",
        "cannot-check": "We kunnen uw code nu niet controleren. U wordt verbonden zonder dat "
        "de medewerker uw gegevens ziet.",
        "identify-first": "Dit nummer is alleen voor bellen met een code. Identificeer u eerst "
        "op de website van de gemeente. Tot ziens.",
        "position-many": "Er zijn meer dan tien bellers voor u.",
        "wait-unknown": "Er is nu geen medewerker beschikbaar. We weten nog niet hoe lang het "
        "duurt.",
        "wait-more": "De verwachte wachttijd is meer dan een uur.",
        "closed": "We zijn nu gesloten. Bel ons terug tijdens onze openingstijden. Uw gegevens "
        "zijn gewist. Tot ziens.",
        "connecting": "U wordt nu doorverbonden met een medewerker.",
        "goodbye": "Het gesprek is beëindigd. Tot ziens.",
    },
    "en": {
        "welcome": "Welcome to ID Bellen.",
        "enter-code": "Please enter the code shown on your phone or screen. If you have no "
        "code, please stay on the line.",
        "code-ok": "Thank you. Your data is ready for the agent.",
        "code-wrong": "We do not know that code, or it has expired. Please try again.",
        "code-final": "That code does not work. You will be connected without the agent "
        "seeing your data.",
        "cannot-check": "We cannot check your code right now. You will be connected without "
        "the agent seeing your data.",
        "identify-first": "This number is only for calls with a code. Please identify on the "
        "municipality's website first. Goodbye.",
        "position-many": "There are more than ten callers before you.",
        "wait-unknown": "No agent is available right now. We do not know yet how long it will "
        "take.",
        "wait-more": "The expected wait is more than an hour.",
        "closed": "We are closed now. Please call again during our opening hours. Your data "
        "has been deleted. Goodbye.",
        "connecting": "You are now being connected to an agent.",
        "goodbye": "The call has ended. Goodbye.",
    },
}

NUMBER_WORDS = {
    "nl": ["nul", "één", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen", "tien"],
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
}


def media(lang: str, key: str) -> str:
    return f"sound:idcontact/{lang}/{key}"


def position_key(position: int) -> str:
    return f"position-{position}" if position <= POSITIONS else "position-many"


def wait_key(expected_seconds: float | None) -> str:
    """Rounded up to whole steps of five minutes, so the caller is never promised too little."""
    if expected_seconds is None:
        return "wait-unknown"
    minutes = max(WAIT_STEP, math.ceil(expected_seconds / 60 / WAIT_STEP) * WAIT_STEP)
    return f"wait-{minutes}" if minutes <= WAIT_MAX else "wait-more"


def long_wait_key(threshold_seconds: int) -> str:
    return f"long-wait-{threshold_seconds // 60}"


def text(lang: str, key: str) -> str:
    """The sentence for ``key`` (the generated ones included)."""
    if key in FIXED[lang]:
        return FIXED[lang][key]
    kind, _, number = key.rpartition("-")
    n = int(number)
    if kind == "position":
        if n == 1:
            return "U bent de volgende." if lang == "nl" else "You are next in line."
        if n == 2:
            return "Er is één beller voor u." if lang == "nl" else "There is one caller before you."
        words = NUMBER_WORDS[lang][n - 1]
        return (
            f"Er zijn {words} bellers voor u."
            if lang == "nl"
            else f"There are {words} callers before you."
        )
    if kind == "wait":
        return (
            f"De verwachte wachttijd is ongeveer {n} minuten."
            if lang == "nl"
            else f"The expected wait is about {n} minutes."
        )
    if kind == "long-wait":
        return (
            f"Het wachten duurt waarschijnlijk langer dan {n} minuten. U kunt ook ophangen en "
            "later terugbellen, of chatten op de website."
            if lang == "nl"
            else f"You will probably wait more than {n} minutes. You can also hang up and call "
            "again later, or chat on the website."
        )
    raise KeyError(key)


def keys(long_wait_thresholds: Iterable[int]) -> list[str]:
    """Every prompt a line with these long-wait thresholds (seconds) can play."""
    out = list(FIXED["nl"])
    out += [f"position-{n}" for n in range(1, POSITIONS + 1)]
    out += [f"wait-{m}" for m in range(WAIT_STEP, WAIT_MAX + 1, WAIT_STEP)]
    out += sorted({long_wait_key(t) for t in long_wait_thresholds if t >= 60})
    return out
