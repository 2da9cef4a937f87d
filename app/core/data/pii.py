"""Find and redact personal data: emails, phone numbers, credit cards, IBANs, IP addresses.

Candidates are found with regular expressions and then checked: card numbers
must pass the Luhn check, IBANs the ISO 7064 mod-97 check, IP addresses must
parse. Replacements are ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``,
``[IP]`` by default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

PII_TYPES: tuple[str, ...] = ("email", "iban", "credit_card", "ipv6", "ipv4", "phone")
DEFAULT_LABELS = {
    "email": "[EMAIL]",
    "iban": "[IBAN]",
    "credit_card": "[CARD]",
    "ipv6": "[IP]",
    "ipv4": "[IP]",
    "phone": "[PHONE]",
}

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{2}[./-]\d{2}[./-]\d{4}$")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 IBAN check: mod-97 of the rearranged number is 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _card(m: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv4(m: re.Match[str]) -> bool:
    try:
        ipaddress.IPv4Address(m.group(0))
    except ValueError:
        return False
    return True


def _ipv6(m: re.Match[str]) -> bool:
    text = m.group(0)
    if text.count(":") < 2 or not any(c.isalnum() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_IBAN_HEAD = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4})+ ?$")


def _phone(m: re.Match[str]) -> bool:
    text = m.group(0)
    if _IBAN_HEAD.search(m.string[max(0, m.start() - 40) : m.start()]):
        return False  # the digits of an IBAN-like number (one that failed its check)
    digits = sum(c.isdigit() for c in text)
    if _DATE.match(text.strip()):
        return False
    # 7..15 digits (E.164), and separated groups or a leading + (not a bare number).
    return 7 <= digits <= 15 and (text.startswith(("+", "(")) or any(c in text for c in " .-"))


_DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = {
    "email": (_EMAIL, None),
    "iban": (_IBAN, lambda m: iban_ok(m.group(0))),
    "credit_card": (_CARD, _card),
    "ipv6": (_IPV6, _ipv6),
    "ipv4": (_IPV4, _ipv4),
    "phone": (_PHONE, _phone),
}


def check_types(types: Iterable[str] | None) -> list[str]:
    """The PII types to use, in detection order; unknown names raise ValueError."""
    if types is None:
        return list(PII_TYPES)
    wanted = list(types)
    unknown = [t for t in wanted if t not in PII_TYPES]
    if unknown:
        raise ValueError(f"unknown PII type(s) {unknown}; known: {list(PII_TYPES)}")
    return [t for t in PII_TYPES if t in wanted]


def redact_text(
    text: str,
    types: Iterable[str] | None = None,
    labels: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
) -> str:
    """``text`` with each found item replaced by its label; adds to ``counts`` if given."""
    lab = {**DEFAULT_LABELS, **(labels or {})}
    for kind in check_types(types):
        pattern, valid = _DETECTORS[kind]

        def sub(m: re.Match[str], kind: str = kind, valid: object = valid) -> str:
            if valid is not None and not valid(m):  # type: ignore[operator]
                return m.group(0)
            if counts is not None:
                counts[kind] = counts.get(kind, 0) + 1
            return lab[kind]

        text = pattern.sub(sub, text)
    return text


def count_text(text: str, types: Iterable[str] | None = None) -> dict[str, int]:
    """How many items of each type ``text`` holds (as redaction would count them)."""
    counts: dict[str, int] = {}
    redact_text(text, types, counts=counts)
    return counts
