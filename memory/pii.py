r"""Personal data and secrets found in text. Candidates are checked (card issuer and Luhn, IBAN mod 97, INSEE key,
`ipaddress`), and a phone number needs a phone's shape or a phone word before it, to keep false positives rare:
a policy that drops an item for a "credit card" must not fire on an order number, nor one for a "phone" on a
ticket id or a date.

It runs on every observed item, so it stays plain regular expressions, kept cheap: a pattern runs only when the
text holds what it needs (`@`, a digit, a keyword, `::`), and patterns open with a literal or a character class,
which lets `re` skip straight to candidates (one that opens with `\b` or a lookbehind is tried at every position,
several times slower). Word-boundary checks come right after the first character, as `(?<!\w.)`, or in Python on
the few matches."""
from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable

from engramma.types import PII_KINDS  # noqa: F401  (the kinds this module finds, re-exported for callers)


# Contact details. The email pattern finds the domain from its "@"; a local part must end right before it.
EMAIL = re.compile(r"@(?<=[A-Za-z0-9._%+-]@)[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")

# Secrets. Vendor token formats: (literal prefix, rest of the token); the prefixes double as a cheap first check.
VENDOR_TOKENS = (
    ("sk-", r"(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic
    ("AKIA", r"[0-9A-Z]{16}"),  # AWS access key id
    ("ASIA", r"[0-9A-Z]{16}"),  # AWS temporary access key id
    *((f"gh{kind}_", r"[A-Za-z0-9]{36,}") for kind in "pousr"),  # GitHub personal, OAuth, user, server, refresh
    ("github_pat_", r"[A-Za-z0-9_]{40,}"),  # GitHub fine-grained personal token
    ("xox", r"[abposr]-[A-Za-z0-9-]{10,}"),  # Slack bot, user, app... tokens
    ("AIza", r"[0-9A-Za-z_-]{35}"),  # Google
    ("sk_", r"(?:live|test)_[0-9A-Za-z]{20,}"),  # Stripe secret key
    ("rk_", r"(?:live|test)_[0-9A-Za-z]{20,}"),  # Stripe restricted key
    ("glpat-", r"[A-Za-z0-9_-]{20,}"),  # GitLab
    ("eyJ", r"[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # JWT: header.payload.signature
    ("-----BEGIN ", r"(?:RSA |EC |DSA |OPENSSH )?PRIVATE KEY-----"),
)
API_KEY = re.compile("|".join(re.escape(prefix) + rest for prefix, rest in VENDOR_TOKENS))

# The patterns on keywords run on the lowercased text, and only when it holds one of their *_WORDS.
SECRET_WORDS = ("key", "token", "secret", "bearer", "authorization")
AUTH_HEADER = re.compile(
    r"authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?[a-z0-9._~+/=-]{16,}"
)
# A keyword then a long value: `api_key=...`, `"token": "..."`, `the secret is ...`, `bearer ...`.
SECRET_KEYWORD = re.compile(
    r"(?:api[_ -]?key|apikey|api[_-]?secret|access[_-]?key|access[_-]?token|secret[_-]?key|secret|private[_-]?key"
    r"|client[_-]?secret|auth[_-]?token|refresh[_-]?token|session[_-]?token|token)[\"']?\s*(?:[:=]|\bis\b)\s*[\"']?"
)
BEARER = re.compile(r"bearer\s+")
# The value must mix letters and digits, so `api_key=settings.openai_api_key` or a prose word is not a secret.
SECRET_VALUE = re.compile(r"(?=[a-z0-9._~+/=-]*\d)(?=[a-z0-9._~+/=-]*[a-z])[a-z0-9._~+/=-]{16,}")
PASSWORD = re.compile(r"(?:password|passwd|pwd|passcode|pass ?phrase)\b\s*(?:is|[:=])\s*\S+")
SSN_BY_WORD = re.compile(  # SSN 123 45 6789 or 123456789: groupings common enough to need the word
    r"(?:ssn|social security)\b(?: number| no\.?)?[\s:#]*(?!000|666|9)\d{3}[ -]?(?!00)\d{2}[ -]?(?!0000)\d{4}\b"
)
# A phone word before a number of any grouping: "tel: 0612345678", "call me on 555 1234".
PHONE_BY_WORD = re.compile(
    r"(?:telephone|tel|phone|call|mobile|cell|whatsapp|ring|fax)\b"
    r"(?:\s*(?:number|no\.|nr\.|#|me|us|him|her|them|on|at|is|via|:|=|-)){0,4}\s*"
    r"(\+?\(?\d[\d ().-]{5,18}\d)(?![\w:@]|[.-]\d)"
)
PHONE_WORDS = ("tel", "phone", "call", "mobile", "cell", "whatsapp", "ring", "fax")
DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")

# Account and national ids that open with two capitals. A NINO's first letter is never D, F, I, Q, U or V, and
# its second never one of those or O.
IBAN = re.compile(r"[A-Z](?<!\w.)[A-Z]\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
NINO = re.compile(r"[A-CEGHJ-PR-TW-Z](?<!\w.)[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")  # UK national insurance
NINO_UNUSED_PREFIXES = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
IPV6 = re.compile(  # loose on purpose (a time 10:30:00 or a MAC address matches too): `ipaddress` decides
    r"(?<![:\w.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)"
)

# A stretch of digits and separators, 7 characters at least (the shortest number below). NUMBER is matched at
# the start of each group in it that does not continue a word or a number; its first alternative that fits
# names the kind to check.
NUMBER_RUN = re.compile(r"[\d+(][\d ().-]{6,}")
NUMBER = re.compile(
    # French INSEE number: sex, year, month, department (2A/2B in Corsica), commune, order, key
    r"(?P<insee>[12] ?\d{2} ?(?:0[1-9]|1[0-2]) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b)"
    r"|(?P<ssn>(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b)"  # US social security number
    r"|(?P<ipv4>(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d))"
    # 16 digits grouped by fours, 15 or 14 grouped 4-6-5 or 4-6-4 (Amex, Diners), or 13-19 digits in one run
    r"|(?P<card>(?:\d{4}(?P<sep4>[ -])\d{4}(?P=sep4)\d{4}(?P=sep4)\d{4}|\d{4}(?P<sep6>[ -])\d{6}(?P=sep6)\d{4,5}"
    r"|\d{13,19})(?!\d))"
    # A phone by its shape. A bare run of digits, or digits grouped 3-3-3, is an order or ticket number as often
    # as a phone, so it needs PHONE_BY_WORD.
    r"|(?P<phone>(?<!\d[ .-])(?:"
    r"(?P<intl>\+\d{1,3}(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,4})?(?:[ .-]\d{1,4}){1,5}|\+\d{8,15})"  # +44 20 7946 0958
    r"|(?:1 ?)?\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (555) 123-4567, 1 (800) 555-0199
    r"|(?:1[ .-])?\d{3}(?P<sep3>[.-])\d{3}(?P=sep3)\d{4}"  # 555-123-4567, 1-800-555-0199
    r"|(?P<trunk>0\d{1,4}(?:[ .-]\d{2,6}){1,4})"  # 020 7946 0958, 06 12 34 56 78: national, leading trunk 0
    r")(?![\w+:@]|[.-]\d))"
)
NUMBER_KINDS = {"insee": "national_id", "ssn": "national_id", "ipv4": "ip_address", "card": "credit_card",
                "phone": "phone"}


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


def card_ok(digits: str) -> bool:
    """A card number: an issuer's first digits (Amex, Diners, JCB 3; Visa 4; Mastercard 51-55 and 2221-2720;
    Maestro, Discover, UnionPay 5-6) and a valid Luhn check."""
    issuer = digits[:1] in ("3", "4", "5", "6") or 2221 <= int(digits[:4]) <= 2720
    return 13 <= len(digits) <= 19 and issuer and luhn_ok(digits)


def insee_ok(candidate: str) -> bool:
    # The key is 97 minus the first 13 digits modulo 97, where Corsica's 2A and 2B count as 19 and 18.
    s = candidate.replace(" ", "").upper().replace("2A", "19", 1).replace("2B", "18", 1)
    return 97 - int(s[:13]) % 97 == int(s[13:])


def find_pii(text: str) -> frozenset[str]:
    """The kinds of personal data or secrets in `text` (a subset of PII_KINDS)."""
    found: set[str] = set()
    # Spans already explained, so a card in an IBAN is not also a card. INVARIANT: disjoint and sorted by start,
    # so a new span can only overlap its neighbours (a log of many addresses stays linear).
    starts: list[int] = []
    ends: list[int] = []

    def is_claimed(start: int, end: int) -> bool:
        i = bisect.bisect_right(starts, start)
        return (i > 0 and ends[i - 1] > start) or (i < len(starts) and starts[i] < end)

    def claim(kind: str, spans: Iterable[tuple[int, int]]) -> None:
        for start, end in spans:
            if not is_claimed(start, end):
                found.add(kind)
                i = bisect.bisect_right(starts, start)
                starts.insert(i, start)
                ends.insert(i, end)

    lowered = text.lower()
    if len(lowered) != len(text):  # a few letters ("İ") lowercase to two characters; spans must agree
        lowered = "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)

    if "@" in text:
        claim("email", (m.span() for m in EMAIL.finditer(text)))
    if any(prefix in text for prefix, _ in VENDOR_TOKENS):
        claim("api_key", (m.span() for m in API_KEY.finditer(text) if _word_starts(text, m.start())))
    if any(word in lowered for word in SECRET_WORDS):
        claim("api_key", (m.span() for m in AUTH_HEADER.finditer(lowered)))
        for keyword in (*SECRET_KEYWORD.finditer(lowered), *BEARER.finditer(lowered)):
            if value := SECRET_VALUE.match(lowered, keyword.end()):  # OPENAI_API_KEY= counts: no word start
                claim("api_key", [value.span()])
    if ("pass" in lowered or "pwd" in lowered) and PASSWORD.search(lowered):
        found.add("password")
    if "::" in text or text.count(":") >= 7:  # compressed, or all 8 groups
        claim("ip_address", (m.span() for m in IPV6.finditer(text) if _ipv6_ok(m.group())))
    if not any(digit in text for digit in "0123456789"):
        return frozenset(found)

    claim("iban", (m.span() for m in IBAN.finditer(text) if iban_ok(m.group())))
    claim("national_id", (m.span() for m in NINO.finditer(text) if m.group()[:2] not in NINO_UNUSED_PREFIXES))
    if "ssn" in lowered or "social security" in lowered:
        claim("national_id", (m.span() for m in SSN_BY_WORD.finditer(lowered) if _word_starts(lowered, m.start())))
    for run in NUMBER_RUN.finditer(text):
        pos, end = run.span()
        while end - pos >= 7:
            m = NUMBER.match(text, pos) if _number_starts(text, pos) and not is_claimed(pos, pos + 1) else None
            if m and _number_ok(m):
                claim(NUMBER_KINDS[m.lastgroup], [m.span()])
                pos = m.end()
            elif (pos := text.find(" ", pos, end) + 1) == 0:  # on to the next group
                break
    if any(word in lowered for word in PHONE_WORDS):
        claim("phone", (m.span() for m in PHONE_BY_WORD.finditer(lowered)
                        if _word_starts(lowered, m.start()) and _phone_by_word_ok(m.group(1))))
    return frozenset(found)


def _word_starts(text: str, i: int) -> bool:
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")


def _number_starts(text: str, i: int) -> bool:
    """A number starts at `i`: not inside a word, a version such as 1.2.3 or a longer number such as 2026-03."""
    return text[i] in "0123456789+(" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_+.-"))


def _number_ok(m: re.Match[str]) -> bool:
    kind, s = m.lastgroup, m.group()
    if kind == "insee":
        return insee_ok(s)
    if kind == "ipv4":
        return _ip_ok(s)
    if kind == "card":
        return card_ok(re.sub(r"\D", "", s))
    if kind == "phone":
        digits = sum(ch.isdigit() for ch in s)
        if m.group("intl"):
            return 8 <= digits <= 15  # E.164 allows at most 15
        if m.group("trunk"):
            return 10 <= digits <= 12  # fewer is a date such as 01.02.2026
    return True


def _phone_by_word_ok(number: str) -> bool:
    return 7 <= sum(ch.isdigit() for ch in number) <= 15 and not DATE.fullmatch(number)


def _ip_ok(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _ipv6_ok(s: str) -> bool:
    if s.endswith(":") and not s.endswith("::"):
        s = s[:-1]  # a colon that ends the clause: "2001:db8::1: unreachable"
    return s != "::" and _ip_ok(s)  # a bare "::" is more often a Haskell type than an address
