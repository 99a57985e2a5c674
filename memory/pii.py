"""Personal data and secrets found in text. Patterns are checked (Luhn, IBAN mod 97, IP octets) to keep
false positives rare: a policy that drops an item for a "credit card" must not fire on an order number."""
from __future__ import annotations

import ipaddress
import re

PII_KINDS = ("email", "phone", "credit_card", "iban", "ip_address", "api_key", "password", "national_id")

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# International or national numbers: optional +, 9-15 digits in groups split by spaces, dots, dashes or brackets.
PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[\s.-]?\(?\d{1,4}\)?){2,7}(?!\w)")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![:\w])")
API_KEY = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|sk_(?:live|test)_[0-9A-Za-z]{20,}"  # Stripe
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"  # JWT
    r"|-----BEGIN (?:RSA |EC |OPENSSH )?PRIVATE KEY-----"
)
PASSWORD = re.compile(r"(?i)\b(?:password|passwd|pwd|passcode|pass ?phrase)\b\s*(?:is|[:=])\s*\S+")
NATIONAL_ID = re.compile(
    r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"  # US social security number
    r"|\b[A-CEGHJ-PR-TW-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b"  # UK national insurance number
    r"|\b[12]\s?\d{2}\s?(?:0[1-9]|1[0-2])\s?(?:\d{2}|2[AB])\s?\d{3}\s?\d{3}\s?\d{2}\b"  # French INSEE number
)


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch) * (2 if double else 1)
        total += d - 9 if d > 9 else d
        double = not double
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def find_pii(text: str) -> frozenset[str]:
    """The kinds of personal data or secrets in `text` (a subset of PII_KINDS)."""
    found: set[str] = set()
    claimed: list[tuple[int, int]] = []  # spans already explained, so a card is not also a phone number

    def claim(kind: str, matches) -> None:
        for m in matches:
            found.add(kind)
            claimed.append(m.span())

    if EMAIL.search(text):
        found.add("email")
    claim("credit_card", (m for m in CARD.finditer(text) if luhn_ok(re.sub(r"\D", "", m.group()))))
    claim("iban", (m for m in IBAN.finditer(text) if iban_ok(m.group())))
    claim("ip_address", (m for m in IPV4.finditer(text) if _ip_ok(m.group())))
    claim("ip_address", (m for m in IPV6.finditer(text) if _ip_ok(m.group())))
    claim("national_id", NATIONAL_ID.finditer(text))
    if API_KEY.search(text):
        found.add("api_key")
    if PASSWORD.search(text):
        found.add("password")
    for m in PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        overlaps = any(m.start() < end and start < m.end() for start, end in claimed)
        if 9 <= len(digits) <= 15 and not overlaps and not ISO_DATE.match(m.group().strip()):
            found.add("phone")
            break
    return frozenset(found)


def _ip_ok(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True
