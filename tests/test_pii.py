"""PII detection: each kind found where it is, and common look-alikes (order numbers, dates, prices) left alone."""
import pytest

from engramma.memory.pii import PII_KINDS, find_pii, iban_ok, luhn_ok

CASES = [
    ("Contact me at alice@example.com", {"email"}),
    ("Call +33 6 12 34 56 78 tomorrow", {"phone"}),
    ("(555) 123-4567 is my number", {"phone"}),
    ("Refunds within 30 days; call 0800 123 456", {"phone"}),
    ("My card is 4111 1111 1111 1111", {"credit_card"}),
    ("card 5500-0000-0000-0004 expires soon", {"credit_card"}),
    ("Card 4111 1111 1111 1112 fails the Luhn check", set()),
    ("IBAN FR76 3000 6000 0112 3456 7890 189", {"iban"}),
    ("IBAN FR76 3000 6000 0112 3456 7890 188 has a bad check digit", set()),
    ("the server is at 192.168.1.20", {"ip_address"}),
    ("fe80:0:0:0:200:f8ff:fe21:67cf", {"ip_address"}),
    ("version 1.2.3.4000 and 999.1.1.1 are not addresses", set()),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", {"api_key"}),
    ("AKIAIOSFODNN7EXAMPLE is the key", {"api_key"}),
    ("token ghp_" + "a" * 36, {"api_key"}),
    ("-----BEGIN RSA PRIVATE KEY-----", {"api_key"}),
    ("my password is hunter2", {"password"}),
    ("pwd=Tr0ub4dor", {"password"}),
    ("SSN 123-45-6789", {"national_id"}),
    ("NINO AB 12 34 56 C", {"national_id"}),
    ("Order #A-1042 shipped on 2 March", set()),
    ("The meeting is at 10:30 on 2026-03-02", set()),
    ("Standard shipping costs 5.49 euros; orders over 60 euros ship free.", set()),
    ("Email bob@example.org or call +44 20 7946 0958", {"email", "phone"}),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_find_pii(text, expected):
    assert set(find_pii(text)) == expected


def test_every_kind_is_covered_by_a_case():
    assert set().union(*(expected for _, expected in CASES)) == set(PII_KINDS)


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
