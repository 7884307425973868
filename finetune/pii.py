"""Personal data in training rows: found, counted by kind and row, optionally replaced.

Only kinds that can be recognised with few false alarms are looked for: e-mail addresses
(a strict pattern), phone numbers (`phonenumbers`, Google's libphonenumber rules, numbers
valid for their region), IBANs (mod-97, `stdnum.iban`), payment-card numbers (Luhn,
`stdnum.luhn`, and an issuer prefix) and EU VAT numbers (each country's checksum,
`stdnum.eu.vat`). Names and addresses need a language model (Presidio's recognisers rest on
spaCy models, which cannot be downloaded here), so they are not found: the report says so.

A finding is reported by kind, count and row, never by value, so the report itself holds
no personal data. Detectors are registered by name in `DETECTORS`; earlier ones win where
matches overlap (an IBAN's digits are not a phone number as well).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from stdnum import iban, luhn
from stdnum.eu import vat

from events.recipe_data import DataSection, PiiPolicy
from finetune.data import sources
from finetune.rows import RowError, checked_rows
from stagefiles.checksums import sha256_file
from stagefiles.preflight_report import PiiKind, PiiReport, RedactedCopy

SHOWN_ROWS = 20
REDACTED_DIR = "redacted"

Span = tuple[int, int]

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.[A-Za-z]{2,24}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_VAT = re.compile(r"\b(?:AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|"
                  r"PT|RO|SE|SI|SK|XI) ?(?=[0-9A-Z]*\d{6})[0-9A-Z]{8,12}\b")
# Card issuers' leading digits (Visa, Mastercard, American Express, Discover, JCB, Maestro,
# UnionPay, Diners): a Luhn check alone passes one random digit string in ten.
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|6011|65|64[4-9]|35|5018|5020|5038|"
                          r"6304|62|36|30[0-5])")
# National phone numbers are read in the region of the recipe's language; numbers written
# with a leading + are found whatever the region.
PHONE_REGIONS: dict[str, tuple[str, ...]] = {
    "en": ("GB", "IE", "US"), "de": ("DE", "AT", "CH"), "fr": ("FR", "BE"), "nl": ("NL", "BE"),
    "it": ("IT",), "es": ("ES",), "pl": ("PL",), "pt": ("PT",), "sv": ("SE",), "da": ("DK",),
    "fi": ("FI",), "cs": ("CZ",), "el": ("GR",), "hu": ("HU",), "ro": ("RO",),
}


def _emails(text: str, language: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ibans(text: str, language: str) -> Iterator[Span]:
    """A grouped IBAN may run into a following word of four capitals: the longest valid
    prefix at a group boundary counts."""
    for m in _IBAN.finditer(text):
        candidate = m.group()
        while candidate:
            if iban.is_valid(candidate):
                yield m.start(), m.start() + len(candidate)
                break
            cut = candidate.rfind(" ")
            candidate = candidate[:cut] if cut > 0 else ""


def _cards(text: str, language: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn.is_valid(digits):
            yield m.span()


def _vat_numbers(text: str, language: str) -> Iterator[Span]:
    for m in _VAT.finditer(text):
        if vat.is_valid(m.group()):
            yield m.span()


def _phones(text: str, language: str) -> Iterator[Span]:
    for region in PHONE_REGIONS.get(language, (None,)):
        for m in phonenumbers.PhoneNumberMatcher(text, region, phonenumbers.Leniency.VALID):
            yield m.start, m.end


@dataclass(frozen=True)
class Detector:
    placeholder: str
    find: Callable[[str, str], Iterator[Span]]


DETECTORS: dict[str, Detector] = {
    "email": Detector("<EMAIL>", _emails),
    "iban": Detector("<IBAN>", _ibans),
    "card": Detector("<CARD_NUMBER>", _cards),
    "vat": Detector("<VAT_NUMBER>", _vat_numbers),
    "phone": Detector("<PHONE>", _phones),
}


def find(text: str, language: str = "en") -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) of every match, in text order."""
    found: list[tuple[int, int, str]] = []
    for kind, detector in DETECTORS.items():
        for start, end in detector.find(text, language):
            if all(end <= s or start >= e for s, e, _ in found):
                found.append((start, end, kind))
    return sorted(found)


def redact(text: str, language: str = "en") -> tuple[str, list[str]]:
    """The text with each match replaced by its kind's placeholder, and the kinds replaced."""
    matches = find(text, language)
    for start, end, kind in reversed(matches):
        text = text[:start] + DETECTORS[kind].placeholder + text[end:]
    return text, [kind for _, _, kind in matches]


def _redact_value(value: Any, language: str, kinds: list[str]) -> Any:
    """Every string inside the row (chat message contents too), redacted; `kinds` collects
    what was replaced."""
    if isinstance(value, str):
        text, found = redact(value, language)
        kinds += found
        return text
    if isinstance(value, dict):
        return {k: _redact_value(v, language, kinds) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, language, kinds) for v in value]
    return value


@dataclass
class _Tally:
    matches: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, kinds: list[str]) -> None:
        for kind in kinds:
            self.matches[kind] = self.matches.get(kind, 0) + 1
        for kind in dict.fromkeys(kinds):
            self.rows.setdefault(kind, []).append(where)

    def kinds(self) -> list[PiiKind]:
        return [PiiKind(kind=k, matches=self.matches[k], rows=len(self.rows[k]),
                        where=self.rows[k][:SHOWN_ROWS])
                for k in DETECTORS if k in self.matches]


def scan(data: DataSection, language: str, policy: PiiPolicy,
         work_dir: Path | None) -> PiiReport:
    """Scan the training and validation sources row by row; with `redact` write each as a
    JSONL copy under `work_dir/redacted/` with every match replaced.

    Rows that are not objects are left out of a copy: the pre-flight already counts them as
    bad, and training would skip them all the same.
    """
    tally = _Tally()
    copies = []
    train, validation = sources(data)
    for role, source in (("train", train), ("validation", validation)):
        if source is None:
            continue
        label = "" if role == "train" else f"{role} "
        out = None
        if policy is PiiPolicy.redact and work_dir is not None:
            out = work_dir / REDACTED_DIR / f"{role}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            copies.append(RedactedCopy(
                role=role, source=str(source), path=str(out),
                source_sha256=sha256_file(source) if isinstance(source, Path) else None))
        with out.open("w", encoding="utf-8") if out else nullcontext() as fh:
            for where, row in checked_rows(source):
                if isinstance(row, RowError):
                    continue
                kinds: list[str] = []
                redacted = _redact_value(row, language, kinds)
                tally.add(f"{label}{where}", kinds)
                if fh is not None:
                    fh.write(json.dumps(redacted, ensure_ascii=False, default=str) + "\n")
    return PiiReport(policy=policy, looked_for=list(DETECTORS), kinds=tally.kinds(),
                     redacted=copies)


