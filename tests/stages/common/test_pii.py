"""The PII scanner on planted help-desk tickets: recall and precision per type, negatives, redact and mask.

    .venv/bin/pytest -q tests/stages/common/test_pii.py

`planted_records` is also the generator of bench/pii.py. Every planted value is valid by construction and checked
with the library the scanner uses (phonenumbers, stdnum, ipaddress), so a miss is the scanner's, not the data's.
"""

from __future__ import annotations

import ipaddress
import random
import string

import phonenumbers
import pytest
from stdnum import iban, luhn

from stages.common.pii import TYPES, Finding, find_pii, mask, redact

FIRST = [
    "anna",
    "ben",
    "chloe",
    "david",
    "elif",
    "farid",
    "grace",
    "hiro",
    "ines",
    "jonas",
    "kemal",
    "lucia",
    "mateo",
    "nadia",
    "oscar",
    "priya",
    "quinn",
    "rosa",
    "sven",
    "tariq",
    "uma",
    "viktor",
    "wen",
    "yusuf",
]
LAST = ["smith", "muller", "garcia", "rossi", "dubois", "nowak", "tanaka", "silva", "okafor", "jensen", "kaya"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.de", "example-shop.fr", "uni.example.edu"]
E164_REGIONS = ["US", "GB", "DE", "FR", "IN", "JP", "AU", "BR", "NL", "ES"]
US_AREA_CODES = [201, 202, 212, 213, 305, 312, 404, 415, 503, 512, 617, 646, 702, 713, 718, 805, 917, 972]
# BBAN shapes from the SWIFT IBAN registry (n: digit, a: upper-case letter, c: either): a mix of pure-digit,
# bank-code-in-letters and mixed BBANs, of lengths 18 (NL) to 27 (FR, IT).
BBAN = {
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "NL": "aaaa" + "n" * 10,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
    "BE": "n" * 12,
    "CH": "n" * 5 + "c" * 12,
    "AT": "n" * 16,
    "PL": "n" * 24,
}

CONTEXT = {
    "email": [
        "Please reply to {} instead of my old address.",
        "You can reach me by email at {}.",
        "My login is {} but the reset link never arrives.",
        "Send the invoice to {}, thanks.",
    ],
    "phone": [
        "Call me back on {} after 5pm.",
        "My number is {} if that is easier.",
        "The courier tried {} twice but nobody answered.",
        "Text {} when the part ships.",
    ],
    "iban": [
        "Please refund the order to IBAN {}.",
        "The direct debit from {} failed again.",
        "I changed my bank account to {} last week.",
    ],
    "card": [
        "I was charged twice on card {} yesterday.",
        "The card {} is declined at checkout.",
        "Please remove the saved card {} from my profile.",
    ],
    "ip": [
        "The login attempts came from {} at night.",
        "Our VPN gateway {} drops the connection.",
        "Whitelist {} for the API, please.",
    ],
}
OPENERS = ["Hello support,", "Hi team,", "Ticket #{n}:", "Dear help desk,", "Re: case {n} -", "Good morning,"]
FILLERS = [
    "The app shows version 4.2.1 and the error persists since 2024-01-15.",
    "I tried twice, same result.",
    "This started after the update to 3.14 on Monday.",
    "Order 58213 is still pending.",
    "It worked fine last month.",
    "Nothing in the FAQ helps with this.",
]
CLOSERS = ["Thanks, {name}", "Best regards, {name}", "Cheers", "Kind regards", "Thank you!"]


def _email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}", f"{first}+support"]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def _phone(rng: random.Random) -> str:
    """E.164 of a region's example number with random trailing digits, or a US number in national format with a
    real area code; redrawn until phonenumbers calls it valid."""
    while True:
        if rng.random() < 0.5:
            region = rng.choice(E164_REGIONS)
            kind = rng.choice([phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE])
            example = phonenumbers.example_number_for_type(region, kind)
            national = str(example.national_number)
            national = national[:-4] + "".join(rng.choices(string.digits, k=4))
            number = phonenumbers.parse(f"+{example.country_code}{national}")
            style = phonenumbers.PhoneNumberFormat.E164
        else:
            exchange = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
            number = phonenumbers.parse(f"{rng.choice(US_AREA_CODES)}{exchange}{rng.randint(0, 9999):04d}", "US")
            style = phonenumbers.PhoneNumberFormat.NATIONAL  # (201) 555-0123
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, style)


def _iban(rng: random.Random) -> str:
    while True:
        country = rng.choice(list(BBAN))
        pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + string.ascii_uppercase}
        bban = "".join(rng.choice(pools[c]) for c in BBAN[country])
        value = country + iban.calc_check_digits(country + "00" + bban) + bban
        if iban.is_valid(value):  # some countries (ES, IT, BE, ...) also check national digits: redraw
            return iban.format(value) if rng.random() < 0.5 else value


def _card(rng: random.Random) -> str:
    """16 digits (Visa 4, Mastercard 51-55) as 4-4-4-4, or 15 (Amex 34/37) as 4-6-5; contiguous, spaces, dashes."""
    amex = rng.random() < 0.3
    prefix = rng.choice(["34", "37"]) if amex else rng.choice(["4", "51", "52", "53", "54", "55"])
    body = prefix + "".join(rng.choices(string.digits, k=(14 if amex else 15) - len(prefix)))
    digits = body + luhn.calc_check_digit(body)
    sep = rng.choice(["", " ", "-"])
    groups = (digits[:4], digits[4:10], digits[10:]) if amex else (digits[:4], digits[4:8], digits[8:12], digits[12:])
    return sep.join(groups)


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return str(ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF)))  # 1.0.0.0 to 223.255.255.255
    groups = [rng.randint(0x2000, 0x3FFF)] + [rng.choice([0, rng.randint(0, 0xFFFF)]) for _ in range(7)]
    return str(ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)))  # compressed: zero runs become ::


GENERATORS = {"email": _email, "phone": _phone, "iban": _iban, "card": _card, "ip": _ip}


def planted_records(n: int, seed: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """n help-desk tickets, each (text, [(type, value)]) with 1-3 valid PII values of random types, among
    ordinary numbers that are not PII (ticket numbers, versions, dates, decimals)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        planted = [(t, GENERATORS[t](rng)) for t in rng.choices(TYPES, k=rng.randint(1, 3))]
        parts = [rng.choice(OPENERS).format(n=rng.randint(10000, 99999))]
        parts += [rng.choice(CONTEXT[t]).format(v) for t, v in planted]
        parts.insert(rng.randint(1, len(parts)), rng.choice(FILLERS))
        parts.append(rng.choice(CLOSERS).format(name=rng.choice(FIRST).title()))
        records.append((" ".join(parts), planted))
    return records


RECORDS = planted_records(300, seed=7)


def _score(records) -> tuple[dict, dict, list]:
    """Per type: planted values found with the right type and span; findings that were not planted."""
    hits, totals, extra = dict.fromkeys(TYPES, 0), dict.fromkeys(TYPES, 0), []
    for text, planted in records:
        found = find_pii(text)
        assert all(text[f.start : f.end] == f.value for f in found)
        got = {(f.type, f.value) for f in found}
        for t, v in planted:
            totals[t] += 1
            hits[t] += (t, v) in got
        extra += [(f, text) for f in found if (f.type, f.value) not in set(planted)]
    return hits, totals, extra


def test_planted_set_covers_every_type_and_format():
    values = [(t, v) for _, planted in RECORDS for t, v in planted]
    assert len(RECORDS) >= 200 and {t for t, _ in values} == set(TYPES)
    assert any(t == "phone" and v.startswith("+") for t, v in values)
    assert any(t == "phone" and v.startswith("(") for t, v in values)
    assert any(t == "card" and len(v.replace(" ", "").replace("-", "")) == 15 for t, v in values)
    assert any(t == "card" and " " in v for t, v in values) and any(t == "card" and "-" in v for t, v in values)
    assert any(t == "iban" and " " in v for t, v in values) and len({v[:2] for t, v in values if t == "iban"}) >= 5
    assert any(t == "ip" and ":" in v for t, v in values) and any(t == "ip" and "." in v for t, v in values)


def test_recall_is_one_per_type():
    hits, totals, _ = _score(RECORDS)
    recall = {t: hits[t] / totals[t] for t in TYPES}
    assert recall == dict.fromkeys(TYPES, 1.0), recall


def test_precision_is_one_on_the_planted_set():
    _, _, extra = _score(RECORDS)
    assert extra == [], extra[:5]  # the tickets' ordinary numbers (58213, 4.2.1, 2024-01-15, 3.14) are not PII


@pytest.mark.parametrize(
    "text",
    [
        "card 4111111111111112 was declined",  # Luhn-invalid 16 digits
        "card 4111 1111 1111 1112 was declined",
        "IBAN DE88370400440532013000 bounced",  # wrong check digits (DE89... is valid)
        "IBAN DE88 3704 0044 0532 0130 00 bounced",
        "upgrade to version 1.2.3.4.5 first",
        "pi is 3.14159 and e is 2.71828",
        "the outage was on 2024-01-15 and 2023-12-31",
        "The quick brown fox jumps over the lazy dog; nothing personal here at all.",
        "x = f(1, 2)",
        "for i in range(10): total += values[i] * 2",
        "y = xs[::2] + d[1:3]",
        "at 12:30:45 the MAC 00:1a:2b:3c:4d:5e went down",
        "write to a@b or to c@d.1",
        "999.1.1.1 is not an address and neither is 01.2.3.4",
        "the float 31.01875 rounds to 31.02",  # a decimal that libphonenumber would read as a US number
    ],
)
def test_negatives_are_not_found(text):
    assert find_pii(text) == []


def test_overlaps_are_resolved_by_priority():
    text = "pay with 4111 1111 1111 1111 or IBAN GB82 WEST 1234 5698 7654 32 today"
    assert [f.type for f in find_pii(text)] == ["card", "iban"]  # not phone, though its digits may look like one
    text = "card 4111 1111 1111 1111, call (201) 555-0123 or 192.168.1.7 +1 201 555 0199"
    assert [f.type for f in find_pii(text)] == ["card", "phone", "ip", "phone"]  # next to a winner, still found
    found = find_pii("mixed 64:ff9b::192.0.2.33 gateway")
    assert [(f.type, f.value) for f in found] == [("ip", "64:ff9b::192.0.2.33")]  # not its IPv4 tail alone


def test_a_swallowed_group_is_trimmed_off():
    text = "card 4111 1111 1111 1111 12 times"
    assert [f.value for f in find_pii(text)] == ["4111 1111 1111 1111"]


def test_types_and_phone_region():
    text = "mail anna@example.com or call 030 901820"
    assert [f.type for f in find_pii(text, types=("email",))] == ["email"]
    assert [f.value for f in find_pii(text, phone_region="DE", types=("phone",))] == ["030 901820"]
    with pytest.raises(ValueError, match="unknown PII type"):
        find_pii(text, types=("ssn",))


def test_redact_replaces_only_the_findings():
    for text, _ in RECORDS[:50]:
        found = find_pii(text)
        redacted = redact(text, found)
        at = 0
        for f in found:  # walk both strings: every byte outside a finding is unchanged
            placeholder = f"[{f.type.upper()}]"
            gap = text[at : f.start]
            assert redacted.startswith(gap + placeholder)
            redacted = redacted[len(gap + placeholder) :]
            at = f.end
        assert redacted == text[at:]


def test_mask_never_shows_the_whole_value():
    findings = [f for text, _ in RECORDS for f in find_pii(text)]
    assert {f.type for f in findings} == set(TYPES)
    for f in findings:
        hint = mask(f)
        assert f.value not in hint and hint != f.value
    assert mask(Finding("email", 0, 0, "john@example.com")) == "j***@e***.com"
    assert mask(Finding("phone", 0, 0, "+12015550167")) == "+1 *** *** **67"
    assert mask(Finding("iban", 0, 0, "DE89 3704 0044 0532 0130 00")) == "DE** **** ... 3000"
    assert mask(Finding("card", 0, 0, "4242-4242-4242-4242")) == "**** **** **** 4242"
    assert mask(Finding("ip", 0, 0, "192.168.1.20")) == "192.168.*.*"
