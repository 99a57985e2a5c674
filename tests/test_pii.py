"""PII detection: each kind and each token format found where it is, and look-alikes (order and ticket numbers,
dates, prices, versions, ISBNs, times) left alone. Vendor tokens are assembled from parts so that secret scanners
do not take this file for a leak."""
import pytest

from engramma.memory.pii import PII_KINDS, VENDOR_TOKENS, card_ok, find_pii, iban_ok, insee_ok, luhn_ok

HEX64 = "3f9a" * 16
B62 = "aB3dE5fG7hJ9kL1mN2pQ4rS6tV8wX0yZ"  # 32 letters and digits

FOUND = [
    # email
    ("Contact me at alice@example.com", {"email"}),
    # phone: a country code, an area code in brackets, usual grouping, or a phone word before the number
    ("Call +33 6 12 34 56 78 tomorrow", {"phone"}),
    ("+44 20 7946 0958", {"phone"}),
    ("+44 (0)20 7946 0958 is the London office", {"phone"}),
    ("reach us at +1-202-555-0143", {"phone"}),
    ("+1 (202) 555-0143", {"phone"}),
    ("Paris: +33 1 23 45 67 89", {"phone"}),
    ("whatsapp +4915112345678", {"phone"}),
    ("(555) 123-4567 is my number", {"phone"}),
    ("555-123-4567", {"phone"}),
    ("555.123.4567", {"phone"}),
    ("toll-free 1-800-555-0199", {"phone"}),
    ("020 7946 0958", {"phone"}),
    ("07700 900123", {"phone"}),
    ("06 12 34 56 78", {"phone"}),
    ("Refunds within 30 days; call 0800 123 456", {"phone"}),
    ("tel: 0612345678", {"phone"}),
    ("Phone number: 5551234567", {"phone"}),
    ("mobile 0612345678, after six", {"phone"}),
    ("ring me on 555 1234", {"phone"}),
    ("Call me on +33 6 12 34 56 78.", {"phone"}),
    # credit_card: an issuer prefix and a Luhn check
    ("My card is 4111 1111 1111 1111", {"credit_card"}),
    ("card 5500-0000-0000-0004 expires soon", {"credit_card"}),
    ("card 4111 1111 1111 1111 12/27", {"credit_card"}),
    ("amex 3782 822463 10005", {"credit_card"}),
    ("4012888888881881", {"credit_card"}),
    ("mastercard 2223 0031 2200 3222", {"credit_card"}),
    # iban
    ("IBAN FR76 3000 6000 0112 3456 7890 189", {"iban"}),
    ("pay to GB82WEST12345698765432", {"iban"}),
    # ip_address, v4 and v6 in full and compressed forms
    ("the server is at 192.168.1.20", {"ip_address"}),
    ("Server at 10.0.0.1.", {"ip_address"}),
    ("fe80:0:0:0:200:f8ff:fe21:67cf", {"ip_address"}),
    ("ping ::1 first", {"ip_address"}),
    ("2001:db8::1", {"ip_address"}),
    ("link-local fe80::1ff:fe23:4567:890a on eth0", {"ip_address"}),
    ("mapped ::ffff:192.0.2.128", {"ip_address"}),
    ("2001:db8::1: unreachable", {"ip_address"}),
    ("dead:beef::cafe", {"ip_address"}),
    # api_key: vendor formats
    ("key sk-" + B62[:24], {"api_key"}),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", {"api_key"}),
    ("sk-ant-api03-" + B62, {"api_key"}),
    ("AKIAIOSFODNN7EXAMPLE is the key", {"api_key"}),
    ("ASIA" + "Y3FMO2EXAMPLE7QZ", {"api_key"}),
    *((f"token {prefix}_" + "a1B2" * 9, {"api_key"}) for prefix in ("ghp", "gho", "ghu", "ghs", "ghr")),
    ("github_pat_" + "11ABCDEFG0" + "x" * 40, {"api_key"}),
    ("xoxb-" + "123456789012-" + "abcdefABCDEF1234", {"api_key"}),
    ("xoxp-" + "1234567890-abcdef", {"api_key"}),
    ("AIza" + "SyA-" + "b" * 31, {"api_key"}),
    ("sk_live_" + B62[:24], {"api_key"}),
    ("sk_test_" + B62[:24], {"api_key"}),
    ("rk_live_" + B62[:24], {"api_key"}),
    ("glpat-" + B62[:20], {"api_key"}),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     {"api_key"}),
    ("-----BEGIN RSA PRIVATE KEY-----", {"api_key"}),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", {"api_key"}),
    # api_key: a secret keyword then a long value that mixes letters and digits
    ("Authorization: Bearer " + B62, {"api_key"}),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", {"api_key"}),
    ("curl -H 'bearer " + B62 + "'", {"api_key"}),
    ("api_key=" + B62, {"api_key"}),
    ("apikey: " + B62[:20], {"api_key"}),
    ("token: " + HEX64, {"api_key"}),
    ("secret=" + B62[:16], {"api_key"}),
    ("OPENAI_API_KEY=" + B62, {"api_key"}),
    ('{"client_secret": "' + B62 + '"}', {"api_key"}),
    ("X-API-Key: " + B62, {"api_key"}),
    ("the access token is " + HEX64, {"api_key"}),
    # password
    ("my password is hunter2", {"password"}),
    ("pwd=Tr0ub4dor", {"password"}),
    # national_id: US SSN, UK National Insurance number, French INSEE number (with its key)
    ("SSN 123-45-6789", {"national_id"}),
    ("SSN 123 45 6789", {"national_id"}),
    ("social security number: 123456789", {"national_id"}),
    ("NINO AB 12 34 56 C", {"national_id"}),
    ("NI number JG103759A", {"national_id"}),
    ("numéro de sécu 2 55 08 14 168 025 38", {"national_id"}),
    ("INSEE 255081416802538", {"national_id"}),
    # several at once
    ("Email bob@example.org or call +44 20 7946 0958", {"email", "phone"}),
    ("SSN 123-45-6789, card 4111 1111 1111 1111, from 10.0.0.7", {"national_id", "credit_card", "ip_address"}),
]

LOOK_ALIKES = [
    # not a phone: ids, dates, times, prices, versions
    ("Order 123 456 789", set()),
    ("Ticket 1234567890", set()),
    ("Invoice 2026-03-01-0042", set()),
    ("ISBN 978-3-16-148410-0", set()),
    ("Build 20260301123456 passed", set()),
    ("Order #A-1042 shipped on 2 March", set()),
    ("The meeting is at 10:30 on 2026-03-02", set()),
    ("due 01.02.2026 10:30", set()),
    ("from 03/01/2026 to 03/15/2026", set()),
    ("call on 2026-03-02", set()),
    ("Standard shipping costs 5.49 euros; orders over 60 euros ship free.", set()),
    ("Price: $1,299.99 (was $1,499.00)", set()),
    ("version 1.2.3.4000 and 999.1.1.1 are not addresses", set()),
    ("upgrade to v2.14.3 or 10.0.19045.3693", set()),
    ("In 2026 we sold 1 234 567 units to 67 000 000 people", set()),
    ("sizes --sizes 1000 10000 100000", set()),
    ("SSN 000-12-3456 is not a valid number", set()),
    # not a card: fails Luhn, or no card issuer starts with its digits
    ("Card 4111 1111 1111 1112 fails the Luhn check", set()),
    ("Order 1234 5678 9012 3452", set()),
    # not an IBAN: bad check digits
    ("IBAN FR76 3000 6000 0112 3456 7890 188 has a bad check digit", set()),
    # not an INSEE number: bad key
    ("2 55 08 14 168 025 39", set()),
    # not an IP address: times, MAC addresses, C++ and Haskell
    ("started 12:30:45, ended 13:02:11", set()),
    ("MAC 00:1A:2B:3C:4D:5E", set()),
    ("use std::vector here", set()),
    ("length :: [a] -> Int", set()),
    # not a secret: a keyword without an opaque value
    ("api_key=settings.openai_api_key", set()),
    ("the token is valid for one hour", set()),
    ("keep the secret: never tell anyone", set()),
    ("max_tokens=1024 tokens", set()),
    ("the bearer of this letter is a friend", set()),
    ("task-abcdefghijklmnopqrstuvwxyz is a job name", set()),
    ("commit " + HEX64[:40] + " and UUID 123e4567-e89b-12d3-a456-426614174000", set()),
]


@pytest.mark.parametrize("text, expected", FOUND + LOOK_ALIKES)
def test_find_pii(text, expected):
    assert set(find_pii(text)) == expected


def test_every_kind_is_covered_by_a_case():
    assert set().union(*(expected for _, expected in FOUND)) == set(PII_KINDS)


def test_every_vendor_token_format_has_a_case():
    token_texts = [text for text, expected in FOUND if expected == {"api_key"}]
    assert [prefix for prefix, _ in VENDOR_TOKENS if not any(prefix in text for text in token_texts)] == []


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_ok("4111111111111111") and not card_ok("1234567890123452")  # passes Luhn, no issuer
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
    assert insee_ok("2 55 08 14 168 025 38") and not insee_ok("2 55 08 14 168 025 39")
    assert insee_ok("1 85 05 2A 006 084 35")  # Corsica: 2A counts as 19
