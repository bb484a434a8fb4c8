"""Find and redact personal data in text: e-mail addresses, phone numbers, IP addresses, card numbers and URLs with
credentials.

Precision matters as much as recall: the corpora are documentation and code, full of version strings, dotted names,
hex, dates, times, slices and long integers that must stay byte-identical. Each kind is a strict shape (a regex,
compiled once here) plus the checks a regex cannot do (octet range, `ipaddress`, Luhn, digit counts, country codes).
What counts and what does not:

- email: local@domain.tld, the TLD letters only and 2+ long, the local part dot-separated atoms of at most 64
  characters; `foo@bar`, `@property`, `a@b.c`, `x@y.mean()` and a URL's bare user (`ftp://anonymous@host`) stay.
- phone: `+<country code>` then 2+ groups of 1-8 digits split by single spaces, dashes or dots (an area code may sit in
  parentheses: `+44 (0)20 7946 0958`), or `+<country code>` and digits with no separator (`+14155552671`); the code
  must be an assigned ITU one and, for +1, the area code must start with 2-9. North-American `(415) 555-2671`,
  `415-555-2671`, `415.555.2671` (one separator kind), optionally after `1-`. 7-15 digits in all (E.164). A bare
  run of digits, a date, a time, a version string, a float (`+3.140000`) or a signed integer in code
  (`+4294967296`, no such country code) is not a phone number.
- ipv4: exactly four dotted octets 0-255 without leading zeros, not inside a longer dotted or alphanumeric run. A
  four-part version string with small parts (`3.1.1.6`) has the same shape and is taken.
- ipv6: what `ipaddress.IPv6Address` accepts, with 2+ non-empty groups (or exactly `::1`) and at least one digit, so
  `::`, `a::b`, `Face::add`, `std::vector`, times (`12:30:45`) and slices (`a[::2]`, `x[1::2]`, `x[:, ::2]`) stay.
- card: 13-19 digits that pass the Luhn check and start with a card network's prefix (Visa 4, Mastercard 51-55 and
  2221-2720, Amex 34/37, Discover, UnionPay, JCB, Diners, Maestro), either grouped (a first group of 4, then groups
  split by one kind of separator, single spaces or dashes) or bare. A bare run must also have its network's length,
  Maestro (too broad a prefix) excepted: big integers in code pass Luhn one time in ten, and so do lists of years
  or round numbers (`2015 2016 2017 2018`) that a separator-only rule would take. A Luhn-valid 16-digit integer
  starting with 4 is still taken: it has a Visa number's shape.
- url_credentials: `scheme://user:password@host...` with a non-empty password; the whole URL goes, trailing prose
  punctuation excepted. A user without a password (`ftp://anonymous@host`) is not a credential and stays, as does
  any URL without userinfo.

Overlaps are resolved by keeping the longer finding, then the more specific kind (later in `KINDS`): a URL with
credentials beats the e-mail-looking `pass@host.com` inside it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KINDS = ("email", "phone", "ipv4", "ipv6", "card", "url_credentials")
PLACEHOLDER = {kind: "<" + kind.upper() + ">" for kind in KINDS}
_SPECIFICITY = {kind: i for i, kind in enumerate(KINDS)}  # the higher wins a tie in length
_Spans = Iterator[tuple[int, int]]  # (start, end) of each candidate a detector yields

# Patterns start with a literal or a small set (`@`, `+`, `://`, a digit) and only then look behind: re then skips
# ahead with a fast scan instead of trying every position, most of the cost on text with little personal data in it.
# Digits are ASCII `[0-9]` (re's \d also takes other scripts' digits).

_EMAIL_DOMAIN = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"  # domain labels
    r"[A-Za-z]{2,63}"  # TLD: letters, 2+ (rules out a@b.c and numeric hosts)
    r"(?![\w-]|\.[A-Za-z0-9]|\()"  # the whole domain, and not a method call `x@y.mean()`
)
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")  # dot-separated atoms
_EMAIL_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_%+-.")
_EMAIL_LOCAL_MAX = 64  # RFC 5321

_URL_CREDENTIALS = re.compile(
    r"://[^\s/?#@:]+:[^\s/?#@]+@"  # user:password@, the password non-empty
    r"(?:\[[0-9A-Fa-f:.]+\]|[\w-]+(?:\.[\w-]+)*)(?::[0-9]{1,5})?"  # host ([IPv6] or names), port
    r"(?:[/?#](?:[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}])?)?"  # path, query, fragment; trailing punctuation is prose
)
_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")

_PHONE_GROUP = r"[0-9]{1,8}"
_PHONE_INTL = re.compile(
    r"\+(?<![\w+]\+)(?P<cc>[1-9][0-9]{0,2})"  # country code, not after a word (1e+10) or another +
    r"(?:"
    rf"(?:[ .-]?\([0-9]{{1,4}}\)[ .-]?{_PHONE_GROUP}|[ .-]{_PHONE_GROUP})(?:[ .-]{_PHONE_GROUP})+"  # 2+ groups
    r"|[0-9]{6,14}"  # or no separators at all
    r")"
    r"(?![\w+]|[.-][0-9])"
)
_PHONE_NANP = re.compile(
    r"[(0-9](?<![\w.+-][(0-9])"  # the first character, not inside a word, number or signed number
    r"(?:(?<=1)[ .-](?:\([0-9]{3}\) ?[0-9]{3}[.-]|[0-9]{3}(?P<sep1>[.-])[0-9]{3}(?P=sep1))"  # 1-415-555-...
    r"|(?<=\()[0-9]{3}\) ?[0-9]{3}[.-]"  # (415) 555-...
    r"|(?<=[0-9])[0-9]{2}(?P<sep>[.-])[0-9]{3}(?P=sep))"  # 415-555-..., 415.555....
    r"[0-9]{4}(?!\w|[.-][0-9])"
)
# ITU-T E.164 country codes in use; none is the prefix of another, so digits after a "+" start with at most one.
_COUNTRY_CODES = frozenset(str(c) for c in (
    1, 7, 20, 27, *range(30, 35), 36, 39, 40, 41, *range(43, 50), *range(51, 59), *range(60, 67), 81, 82, 84, 86,
    *range(90, 96), 98, 211, 212, 213, 216, 218, *range(220, 259), *range(260, 270), 290, 291, 297, 298, 299,
    *range(350, 360), *range(370, 384), 385, 386, 387, 389, 420, 421, 423, *range(500, 510), *range(590, 600), 670,
    *range(672, 693), 800, 808, 850, 852, 853, 855, 856, 870, 878, *range(880, 884), 886, 888, *range(960, 969),
    *range(970, 978), 979, *range(992, 999),
))

_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\w|\.\w)")  # octets: _ipv4_ok

# Candidates only (a hex group and a colon, or `::`); _ipv6_ok decides.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|::)[0-9A-Fa-f:]*"
    r"(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?"  # an embedded IPv4 tail, ::ffff:192.0.2.1
    r"(?![\w:]|\.[0-9])"
)
_IPV6_GROUP_SEP = re.compile(r"[:.]")

_CARD = re.compile(
    r"[0-9](?<![\w.,][0-9])(?<![0-9][ -][0-9])"  # the first digit, not inside a number or a run of groups
    r"(?:[0-9]{3}(?P<sep>[ -])[0-9]{3,6}(?:(?P=sep)[0-9]{1,6}){1,3}(?!(?P=sep)[0-9])"  # grouped, one separator kind
    r"|[0-9]{12,18})"  # or bare
    r"(?!\w|[.,][0-9])"
)

_CARD_NETWORKS = (  # (name, leading-digit ranges, lengths); the first match wins, so Maestro's broad 56-69 is last
    ("visa", ((4, 4),), (13, 16, 19)),
    ("mastercard", ((51, 55), (2221, 2720)), (16,)),
    ("amex", ((34, 34), (37, 37)), (15,)),
    ("discover", ((6011, 6011), (644, 649), (65, 65)), (16, 17, 18, 19)),
    ("unionpay", ((62, 62),), (16, 17, 18, 19)),
    ("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    ("diners", ((36, 36), (38, 39), (300, 305), (3095, 3095)), (14, 15, 16, 17, 18, 19)),
    ("maestro", ((50, 50), (56, 69)), (12, 13, 14, 15, 16, 17, 18, 19)),
)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int  # the span in the text: text[start:end]
    end: int


def luhn_valid(digits: str) -> bool:
    """Return whether a string of ASCII digits passes the Luhn checksum (false for anything else or under 2)."""
    if len(digits) < 2 or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(c for c in s if "0" <= c <= "9")


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"  # what re's \w matches in str patterns


def _run_start(text: str, end: int, chars: frozenset[str], limit: int) -> int:
    """Return where the run of `chars` ending at `end` starts, looking back at most `limit` + 1 characters."""
    start = end
    while start > 0 and end - start <= limit and text[start - 1] in chars:
        start -= 1
    return start


def _emails(text: str) -> _Spans:
    # Anchored on "@" and extended back over the local part: much faster than trying every position as a start.
    for m in _EMAIL_DOMAIN.finditer(text):
        at = m.start()
        start = _run_start(text, at, _EMAIL_LOCAL_CHARS, _EMAIL_LOCAL_MAX)
        if at - start > _EMAIL_LOCAL_MAX or not _EMAIL_LOCAL.fullmatch(text, start, at):
            continue
        if start and (_is_word_char(text[start - 1]) or text.endswith("://", 0, start)):
            continue  # inside a longer word, or a URL's user (ftp://anonymous@host: no password, no credential)
        yield start, m.end()


def _url_credentials(text: str) -> _Spans:
    # Anchored on "://" and extended back over the scheme.
    for m in _URL_CREDENTIALS.finditer(text):
        start = _run_start(text, m.start(), _SCHEME_CHARS, 32)
        if start == m.start() or not ("A" <= text[start] <= "Z" or "a" <= text[start] <= "z"):
            continue
        if start and (_is_word_char(text[start - 1]) or text[start - 1] in _SCHEME_CHARS):
            continue
        yield start, m.end()


def _phone_ok(m: re.Match[str]) -> bool:
    digits = _digits(m.group())
    if not 7 <= len(digits) <= 15:
        return False
    cc = m.groupdict().get("cc")
    if cc is None:
        return True  # North-American form
    if len(m.group()) == len(digits) + 1:  # "+" and digits only: the regex cannot tell where the code ends
        cc = next((digits[:n] for n in (1, 2, 3) if digits[:n] in _COUNTRY_CODES), None)
    if cc not in _COUNTRY_CODES:
        return False
    return cc != "1" or (len(digits) == 11 and digits[1] in "23456789")  # +1: a 3-digit area code from 2-9, 7 more


def _ipv4_ok(m: re.Match[str]) -> bool:
    return all(octet == "0" or (octet[0] != "0" and int(octet) <= 255) for octet in m.group().split("."))


def _card_network(digits: str) -> tuple[str, tuple[int, ...]] | None:
    """Return the card network whose prefix `digits` starts with, and its lengths, or None."""
    for name, prefixes, lengths in _CARD_NETWORKS:
        if any(lo <= int(digits[:len(str(lo))]) <= hi for lo, hi in prefixes):
            return name, lengths
    return None


def _card_ok(m: re.Match[str]) -> bool:
    digits = _digits(m.group())
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return False
    network = _card_network(digits)
    if m.group("sep") is not None:  # grouped like a card: any network
        return network is not None
    return network is not None and network[0] != "maestro" and len(digits) in network[1]


def _ipv6_ok(m: re.Match[str]) -> bool:
    s, text, start = m.group(), m.string, m.start()
    if start and text[start - 1] == "[" and (start < 2 or text[start - 2] not in "/@"):
        return False  # a subscript (`a[::2]`, `x[1::2]`), not a URL host like http://[::1]/
    if not any("0" <= c <= "9" for c in s):
        return False  # `dead::beef`, `Face::add`: C++ names made of hex letters
    if s != "::1" and sum(1 for g in _IPV6_GROUP_SEP.split(s) if g) < 2:
        return False  # `::`, `::2`, `10::`: slice steps and bounds, not addresses (loopback excepted)
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _matches(pattern: re.Pattern[str], check: Callable[[re.Match[str]], bool]) -> Callable[[str], _Spans]:
    return lambda text: ((m.start(), m.end()) for m in pattern.finditer(text) if check(m))


_DETECTORS: tuple[tuple[str, Callable[[str], _Spans]], ...] = (
    ("email", _emails),
    ("phone", _matches(_PHONE_INTL, _phone_ok)),
    ("phone", _matches(_PHONE_NANP, _phone_ok)),
    ("ipv4", _matches(_IPV4, _ipv4_ok)),
    ("ipv6", _matches(_IPV6, _ipv6_ok)),
    ("card", _matches(_CARD, _card_ok)),
    ("url_credentials", _url_credentials),
)


def _resolve(cluster: list[Finding]) -> list[Finding]:
    """Keep the longest finding, then the more specific kind, dropping whatever overlaps one already kept."""
    kept: list[Finding] = []
    for f in sorted(cluster, key=lambda f: (f.start - f.end, -_SPECIFICITY[f.kind], f.start)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    return kept


def find_pii(text: str) -> list[Finding]:
    """Return the personal data in `text`: non-overlapping findings sorted by start."""
    candidates = sorted(
        (Finding(kind, start, end) for kind, detect in _DETECTORS for start, end in detect(text)),
        key=lambda f: (f.start, -f.end),
    )
    # Overlaps are rare and local: resolve each run of mutually overlapping candidates on its own (linear overall).
    findings: list[Finding] = []
    cluster: list[Finding] = []
    cluster_end = -1
    for f in candidates:
        if cluster and f.start >= cluster_end:
            findings += _resolve(cluster)
            cluster = []
        cluster.append(f)
        cluster_end = max(cluster_end, f.end) if len(cluster) > 1 else f.end
    findings += _resolve(cluster)
    return sorted(findings, key=lambda f: f.start)


def redact(text: str) -> tuple[str, Counter[str]]:
    """Replace each finding with its kind's placeholder; return the new text and the count per kind."""
    parts: list[str] = []
    counts: Counter[str] = Counter()
    pos = 0
    for f in find_pii(text):
        parts += [text[pos:f.start], PLACEHOLDER[f.kind]]
        counts[f.kind] += 1
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), counts
