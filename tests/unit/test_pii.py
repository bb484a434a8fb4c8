"""pii: planted personal data of every kind is found and redacted; look-alikes from docs and code stay byte-identical."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter

import pytest

from dataprep.pii import _COUNTRY_CODES, KINDS, PLACEHOLDER, Finding, find_pii, luhn_valid, redact

PLANTED = {
    "email": [
        "john.doe+tag@example.co.uk",
        "j_smith@mail.example.com",
        "alice@example.org",
        "Fred.A.Johnson@python.org",
    ],
    "phone": [
        "+1 415 555 2671",
        "+44 20 7946 0958",
        "+33 1 42 68 53 00",
        "+44 (0)20 7946 0958",
        "+1 (415) 555-2671",
        "+1-415-555-2671",
        "+1.415.555.2671",
        "+49 30 12345678",
        "+14155552671",
        "+31641044153",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "1-800-555-1234",
    ],
    "ipv4": ["192.168.1.1", "127.0.0.1", "0.0.0.0", "255.255.255.255", "10.0.0.1"],
    "ipv6": [
        "2001:db8::1",
        "2001:db8::",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "::ffff:192.0.2.1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "FE80::822A:A8FF:FE49:470C",
    ],
    "card": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "4242 4242 4242 4242",
        "5555555555554444",
        "3782 822463 10005",
        "378282246310005",
        "6011 1111 1111 1117",
        "4222222222222",
        "6759 6498 2643 8453",  # Maestro: taken when grouped like a card
    ],
    "url_credentials": [
        "postgres://admin:s3cret@db.example.com:5432/prod?sslmode=require",
        "https://user:p%40ss@example.com/",
        "ftp://bob:hunter2@files.example.org",
        "redis://default:pw@[2001:db8::1]:6379/0",
    ],
}
CASES = [(kind, value) for kind, values in PLANTED.items() for value in values]

NEAR_MISSES = [
    # version strings, section numbers, dotted names
    "Python 3.12.1 was released",
    "see 1.2.3 and 1.2.3.4.5",
    "os.path.join(a, b)",
    "999.1.1.1 and 256.1.1.1 and 01.2.3.4",
    "v1.2.3.4 and 1.2.3.4a",
    # dates and times
    "on 2024-01-15 at 12:30:45",
    "2001-01-01T12:30:45+01:00",
    "15.01.2024 and 2024.01.15",
    # hex and C++ names
    "0xdeadbeef and deadbeefcafe",
    "dead::beef and Face::add",
    "a ratio of 1:2:3:4:5:6:7:8:9",
    "std::vector<int> v; std::size_t n; Foo::bar(); Uint128::add(a, b);",
    # decorators, matrix products, e-mail-looking nonsense
    "@property\ndef x(self): ...",
    "@functools.lru_cache(maxsize=None)",
    "foo@bar and a@b.c and x@y.mean() and A @ B.T",
    # slices and reST
    "a[::2] + x[1::2] + s[::-1] + x[:, ::2] + y[10::]",
    "for example::\n\n    pass",
    "the :: token",
    # card-shaped numbers that fail Luhn or are not card numbers
    "4111 1111 1111 1112 and 4111111111111112",
    "sys.maxsize == 9223372036854775807",
    "2**64 - 1 == 18446744073709551615",
    "2019 2020 2021 2022",
    "2015 2016 2017 2018 and 1996-1997-1998-1999",  # Luhn-valid, but no card network starts with 19 or 20
    "hash('abc') == 573763426263223372 and 6759649826438453",  # Luhn-valid, Maestro's prefix, but bare: not taken
    "9999999999999995 and 1234567890123452",  # Luhn-valid, no network
    "1234567890123",
    # phone-shaped numbers that are not
    "call 4155552671",
    "format(3.14, '+f') == '+3.140000'",
    "a = +4294967296  # 1 << 32",
    "format(1234, '+b') == '+10011010010'",
    "1e+10 and +1 2 3",
    "format(7.1234567, '+') == '+7.1234567'",  # +7 is a country code, but one group is a float
    "+33 1 42 is too short and +44 1234 5678 9012 3456 too long",
    # URLs without credentials
    "https://docs.python.org/3/library/ipaddress.html",
    "ftp://anonymous@ftp.example.com/pub",
    "http://user:@host.example.com/",
    # arithmetic
    "3 * 4 - 5",
    "(1 + 2) * 3 - 4 / 5",
    "10 ** 7 + 1234567",
]


def _embed(value: str) -> tuple[str, int]:
    prefix = "Contact: "
    return f"{prefix}{value}, thanks.", len(prefix)


def test_placeholders_are_typed_per_kind():
    assert KINDS == ("email", "phone", "ipv4", "ipv6", "card", "url_credentials")
    assert PLACEHOLDER == {
        "email": "<EMAIL>",
        "phone": "<PHONE>",
        "ipv4": "<IPV4>",
        "ipv6": "<IPV6>",
        "card": "<CARD>",
        "url_credentials": "<URL_CREDENTIALS>",
    }


@pytest.mark.parametrize(("kind", "value"), CASES, ids=[f"{k}:{v}" for k, v in CASES])
def test_planted_value_is_found_with_its_exact_span(kind, value):
    text, start = _embed(value)
    assert find_pii(text) == [Finding(kind, start, start + len(value))]


@pytest.mark.parametrize(("kind", "value"), CASES, ids=[f"{k}:{v}" for k, v in CASES])
def test_planted_value_is_redacted_with_its_placeholder(kind, value):
    text, _ = _embed(value)
    assert redact(text) == (f"Contact: {PLACEHOLDER[kind]}, thanks.", Counter({kind: 1}))


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_miss_stays_byte_identical(text):
    assert find_pii(text) == []
    assert redact(text) == (text, Counter())


def test_every_kind_is_planted_and_has_a_near_miss_list():
    assert set(PLANTED) == set(KINDS)


def test_url_with_credentials_wins_over_the_email_inside_it():
    url = "postgres://user:pass@db.example.com/x"
    assert find_pii("pass@db.example.com") == [Finding("email", 0, 19)]  # alone, the tail is an e-mail
    assert find_pii(url) == [Finding("url_credentials", 0, len(url))]
    assert redact(f"dsn={url} ok") == ("dsn=<URL_CREDENTIALS> ok", Counter({"url_credentials": 1}))


def test_ipv6_with_embedded_ipv4_is_one_ipv6_finding():
    assert find_pii("::ffff:192.0.2.1") == [Finding("ipv6", 0, 16)]


def test_url_user_without_password_is_neither_credential_nor_email():
    text = "mirror ftp://anonymous@ftp.example.com/pub, mail anonymous@ftp.example.com"
    start = text.rindex("anonymous")
    assert find_pii(text) == [Finding("email", start, len(text))]  # only the second, stand-alone address


def test_user_at_ip_address_redacts_the_address_only():
    assert redact("ssh root@10.0.0.1") == ("ssh root@<IPV4>", Counter({"ipv4": 1}))


def test_url_host_in_brackets_is_ipv6_but_a_subscript_is_not():
    assert redact("http://[::1]:8080/ vs a[::1]") == ("http://[<IPV6>]:8080/ vs a[::1]", Counter({"ipv6": 1}))


def test_ipv4_with_port_and_at_sentence_end():
    assert redact("bind 127.0.0.1:8080. Then 10.0.0.1.") == ("bind <IPV4>:8080. Then <IPV4>.", Counter({"ipv4": 2}))


def test_grouping_must_use_one_separator_and_stop_with_the_number():
    assert find_pii("4111 1111-1111 1111") == []  # mixed separators
    assert find_pii("4111 1111 1111 1111 1111 1111") == []  # too many groups to be one card
    assert find_pii("415-555.2671") == []  # mixed separators


MIXED = """\
Release notes for 3.12.1 (2024-01-15): see https://docs.python.org/3/whatsnew/ and issue #4155552671.
Report bugs to Jane Roe <jane.roe@example.com> or call +1 (415) 555-2671 / 415.555.2671.
The staging box is 192.168.10.20 (IPv6 2001:db8:0:1::20); the old one, 999.1.1.1, is gone.
    @property
    def dsn(self):
        return "postgres://app:Tr0ub4dor@db.internal.example.com:5432/app"  # rotated 12:30:45
Test card 4111 1111 1111 1111 is fine; 4111 1111 1111 1112 is a typo. a[::2], std::vector, 3 * 4 - 5.
"""
MIXED_REDACTED = """\
Release notes for 3.12.1 (2024-01-15): see https://docs.python.org/3/whatsnew/ and issue #4155552671.
Report bugs to Jane Roe <<EMAIL>> or call <PHONE> / <PHONE>.
The staging box is <IPV4> (IPv6 <IPV6>); the old one, 999.1.1.1, is gone.
    @property
    def dsn(self):
        return "<URL_CREDENTIALS>"  # rotated 12:30:45
Test card <CARD> is fine; 4111 1111 1111 1112 is a typo. a[::2], std::vector, 3 * 4 - 5.
"""


def test_mixed_paragraph_is_redacted_exactly():
    redacted, counts = redact(MIXED)
    assert redacted == MIXED_REDACTED
    assert counts == Counter(email=1, phone=2, ipv4=1, ipv6=1, card=1, url_credentials=1)


def test_findings_are_sorted_and_disjoint():
    findings = find_pii(MIXED)
    assert [f.start for f in findings] == sorted(f.start for f in findings)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))
    assert [f.kind for f in findings] == ["email", "phone", "phone", "ipv4", "ipv6", "url_credentials", "card"]


@pytest.mark.parametrize("text", [MIXED, *(_embed(v)[0] for _, v in CASES)])
def test_redaction_is_idempotent(text):
    once, _ = redact(text)
    assert redact(once) == (once, Counter())


def test_finding_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Finding("email", 0, 1).start = 2


@pytest.mark.parametrize("digits", ["4111111111111111", "79927398713", "378282246310005", "0000000000000"])
def test_luhn_accepts_valid_numbers(digits):
    assert luhn_valid(digits)


@pytest.mark.parametrize("digits", ["4111111111111112", "79927398710", "", "0", "4111 1111 1111 1111", "١٢"])
def test_luhn_rejects_invalid_numbers_and_non_digits(digits):
    assert not luhn_valid(digits)


def test_country_codes_are_prefix_free():
    # _phone_ok reads the code off a separator-less number by taking the one code its digits start with.
    assert not [(a, b) for a in _COUNTRY_CODES for b in _COUNTRY_CODES if a != b and b.startswith(a)]


def test_python_documentation_has_no_findings():
    from pydoc_data.topics import topics  # ~465 KB of prose, grammar and code examples

    text = "\n".join(topics.values())
    assert find_pii(text) == []


@pytest.mark.parametrize(
    "text",
    ["1." * 100_000, "1 " * 100_000, "1234-" * 50_000, "a:" * 100_000, "a@" * 100_000, "+1 " * 100_000, "(123) " * 50_000],
    ids=["dots", "spaced-digits", "dashed-groups", "colons", "ats", "plus", "parens"],
)
def test_pathological_inputs_stay_linear(text):
    start = time.perf_counter()
    find_pii(text)
    assert time.perf_counter() - start < 2.0  # ~0.05 s here; catastrophic backtracking would take minutes
