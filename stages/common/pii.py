"""Find, redact and mask structured personal data (PII) in text, for the `data` stage of a project that declares
personal data.

    .venv/bin/python -c "from stages.common.pii import find_pii; print(find_pii('call +1 201-555-0123'))"
    .venv/bin/python bench/pii.py          # throughput against a str.lower() baseline

Five types (`TYPES`), each validated by a maintained library, not by a hand-written checksum:
  phone  Google's libphonenumber (`phonenumbers.PhoneNumberMatcher`, leniency VALID): international numbers (+..)
         anywhere, and the national formats of `phone_region`. It both finds and validates; nothing hand-written.
  iban   `stdnum.iban.is_valid` (the mod-97 check digits, the country's length and BBAN format)
  card   `stdnum.luhn.is_valid` on the digits (a Luhn failure is not a card)
  ip     the stdlib `ipaddress` (IPv4, IPv6)
  email  a practical regex only (local@domain.tld): a mailbox cannot be validated offline.
Hand-written: the regexes that find the iban, card, ip and email *candidates* (the libraries validate a string,
they do not search text), and the overlap rule. Their lookarounds keep a candidate from starting or ending inside
a longer token: `1.2.3.4.5` is a version, not an IP; the 16 digits inside a 20-digit number are not a card.
Overlaps are resolved by type priority, email > iban > card > ip > phone, then the longer span: a grouped IBAN's
digits may pass Luhn, an IPv6 address may end in an IPv4 one, and the phone matcher accepts a card's digits.

Regexes are compiled once at import; each detector runs only when the text can hold its type (an "@" for email,
7 digits outside the other findings for phone, ...), so prose without digits costs two quick scans. The phone
matcher, pure Python, takes most of the time: it reads the text with the other types' findings blanked out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn

TYPES = ("email", "phone", "iban", "card", "ip")
PRIORITY = ("email", "iban", "card", "ip", "phone")  # who wins an overlap; then the longer span, then the earlier

_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"  # local part: no leading/trailing dot
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"  # one or more domain labels, each followed by a dot
    r"[A-Za-z]{2,24}(?![\w-])"
)  # a letters-only TLD: `a@b` and `a@b.1` are not addresses
# 2 letters, 2 check digits, then the BBAN: compact (11-30) or in groups of 4 split by single spaces (the
# printed form), the last group 1-4 long. Upper case only, as printed; `stdnum.iban` checks the rest.
_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![\w-])")
# 13-19 digits, contiguous or in groups with one consistent separator: 4-4-4-4(-3) (Visa, Mastercard), 4-6-5
# (Amex), 4-6-4 (Diners), 4-4-4-1 (old 13-digit Visa). Not after a "+" (+5511961236164 is an E.164 phone whose
# digits may pass Luhn: 1 in 10 do), nor inside a decimal or a longer dashed number.
_CARD = re.compile(r"(?<![\w.,+-])(?:\d{13,19}|\d{4}(?P<sep>[ -])\d{4,6}(?:(?P=sep)\d{1,5}){1,3})(?![\w-]|[.,]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# Starts with a hex group (`x[::2]` in code is not an address; `::1` is loopback, not personal), 2-8 colons,
# optionally an embedded IPv4 tail (`64:ff9b::192.0.2.33`); find_pii also wants a decimal digit in it (`abc::def`
# in prose is not an address), and `ipaddress` rejects times (12:30:45) and MAC addresses.
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?:(?:\.\d{1,3}){3})?(?![\w:]|\.\d)")
_SEVEN_DIGITS = re.compile(r"(?:\d\D*){7}")  # linear: \d and \D never compete, so no backtracking
_DIGIT = re.compile(r"\d")
_DECIMAL = re.compile(r"\d+\.\d+")
_SEPARATORS = re.compile(r"[ -]")


@dataclass(frozen=True)
class Finding:
    type: str  # one of TYPES
    start: int
    end: int
    value: str  # text[start:end]


def find_pii(text: str, phone_region: str = "US", types: tuple[str, ...] = TYPES) -> list[Finding]:
    """Every finding in text, sorted by start, non-overlapping (a longer/earlier one wins).

    phone_region: the ISO 3166 region whose national phone format is recognised (international +.. always is).
    types: a subset of TYPES to look for."""
    unknown = set(types) - set(TYPES)
    if unknown:
        raise ValueError(f"unknown PII type(s) {sorted(unknown)}: choose from {list(TYPES)}")
    found: list[Finding] = []
    if "email" in types and "@" in text:
        found += (Finding("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text))
    has_digit = _DIGIT.search(text) is not None
    if "iban" in types and has_digit:
        found += _validated(text, _IBAN, "iban", 15, _iban.is_valid)
    if "card" in types and has_digit:
        found += _validated(text, _CARD, "card", 13, lambda v: luhn.is_valid(_SEPARATORS.sub("", v)))
    if "ip" in types and has_digit:
        found += (Finding("ip", m.start(), m.end(), m.group()) for m in _IPV4.finditer(text) if _is_ip(m.group()))
        if ":" in text:
            found += (
                Finding("ip", m.start(), m.end(), m.group())
                for m in _IPV6.finditer(text)
                if _DIGIT.search(m.group()) and _is_ip(m.group())
            )
    if "phone" in types and has_digit:
        # Every other type outranks phone, so the matcher, which takes most of the scan's time, reads the text with
        # their findings blanked (same offsets): that halves the scan's time on help-desk tickets. A blank is as many
        # spaces as the finding had characters: 6 or more (an email, an IPv4, a card, an IBAN; all but the shortest
        # IPv6, such as 1::), more than the 4 separators the matcher allows inside a number: no groups are joined.
        found = _resolve(found)  # blank only the winners: a card that lost to an IBAN hides no phone
        rest = _blank(text, found)
        if _SEVEN_DIGITS.search(rest):
            matcher = phonenumbers.PhoneNumberMatcher(rest, phone_region, leniency=phonenumbers.Leniency.VALID)
            # A decimal number (31.01875) is a measurement, not a phone: libphonenumber takes the dot as a separator.
            found += (
                Finding("phone", m.start, m.end, text[m.start : m.end])
                for m in matcher
                if not _DECIMAL.fullmatch(m.raw_string)
            )
    return _resolve(found)


def _blank(text: str, found: list[Finding]) -> str:
    if not found:
        return text
    chars = list(text)
    for f in found:
        chars[f.start : f.end] = " " * (f.end - f.start)
    return "".join(chars)


def _validated(text: str, pattern: re.Pattern, kind: str, min_chars: int, is_valid) -> list[Finding]:
    """Candidates of pattern that is_valid accepts. A grouped candidate may have swallowed a following group
    (`4242 4242 4242 4242 12 items`, `... 0130 00 THAT`): when the whole fails, its prefixes that end at a
    separator are tried, longest first, down to min_chars characters without separators."""
    out = []
    for m in pattern.finditer(text):
        value = m.group()
        cuts = [len(value)] + [s.start() for s in reversed(list(_SEPARATORS.finditer(value)))]
        for cut in cuts:
            candidate = value[:cut]
            if len(_SEPARATORS.sub("", candidate)) < min_chars:
                break
            if is_valid(candidate):
                out.append(Finding(kind, m.start(), m.start() + cut, candidate))
                break
    return out


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)  # rejects 999.1.1.1, leading zeros (01.2.3.4), 12:30:45, MAC addresses
    except ValueError:
        return False
    return True


def _resolve(found: list[Finding]) -> list[Finding]:
    """Keep the winners of every overlap (PRIORITY, then longer, then earlier), sorted by start."""
    rank = {t: i for i, t in enumerate(PRIORITY)}
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (rank[f.type], f.start - f.end, f.start)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):  # a handful per text: quadratic is fine
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    """Each finding replaced by its placeholder: [EMAIL] [PHONE] [IBAN] [CARD] [IP]."""
    parts, at = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        parts += [text[at : f.start], f"[{f.type.upper()}]"]
        at = f.end
    parts.append(text[at:])
    return "".join(parts)


def mask(f: Finding) -> str:
    """A hint safe for a data card, never the whole value: e.g. j***@e***.com, +1 *** *** **67, DE** **** ... 3000,
    **** **** **** 4242, 192.168.*.*"""
    v = f.value
    if f.type == "email":
        local, domain = v.rsplit("@", 1)
        return f"{local[0]}***@{domain[0]}***.{domain.rsplit('.', 1)[1]}"
    if f.type == "phone":
        return _mask_phone(v)
    if f.type == "iban":
        compact = _iban.compact(v)
        return f"{compact[:2]}** **** ... {compact[-4:]}"
    if f.type == "card":
        return f"**** **** **** {_SEPARATORS.sub('', v)[-4:]}"
    if f.type == "ip":
        address = ipaddress.ip_address(v)
        if address.version == 4:
            return ".".join(v.split(".")[:2]) + ".*.*"
        head = [g.lstrip("0") or "0" for g in address.exploded.split(":")[:2]]
        return ":".join(head + ["*"] * 6)  # the first 32 bits: the network's hint, none of the host
    raise ValueError(f"unknown PII type {f.type!r}: choose from {list(TYPES)}")


def _mask_phone(v: str) -> str:
    """+1 *** *** **67: the country code (for +.. numbers) and the last two digits, every other digit a star;
    a national number keeps its own punctuation, since its country cannot be told from the value alone."""
    if v.lstrip().startswith("+"):
        try:
            number = phonenumbers.parse(v, None)
            formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            code, rest = formatted.split(" ", 1)
            return f"{code} {_star_digits(rest.replace('-', ' '), keep=2)}"
        except (phonenumbers.NumberParseException, ValueError):
            pass
    return _star_digits(v, keep=2)


def _star_digits(s: str, keep: int) -> str:
    digits = sum(c.isdigit() for c in s)
    out, seen = [], 0
    for c in s:
        if c.isdigit():
            seen += 1
            out.append(c if seen > digits - keep else "*")
        else:
            out.append(c)
    return "".join(out)
