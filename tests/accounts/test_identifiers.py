import pytest
from django.core.exceptions import ValidationError

from accounts.identifiers import identifier_parse, phone_mask, phone_normalize
from accounts.models import Region


@pytest.mark.parametrize(
    ("typed", "region", "expected"),
    [
        ("13800138000", Region.MAINLAND_CHINA, "+8613800138000"),
        ("138 0013 8000", Region.MAINLAND_CHINA, "+8613800138000"),
        ("138-0013-8000", Region.MAINLAND_CHINA, "+8613800138000"),
        ("+86 138 0013 8000", Region.MAINLAND_CHINA, "+8613800138000"),
        ("008613800138000", Region.MAINLAND_CHINA, "+8613800138000"),
        ("+44 7911 123456", Region.OTHER, "+447911123456"),
        ("+1 (201) 555-0123", Region.OTHER, "+12015550123"),
        # Without a region (allauth's own forms), a bare mainland mobile is still understood.
        ("13800138000", None, "+8613800138000"),
    ],
)
def test_it_normalizes_phone_numbers_to_e164(typed, region, expected):
    assert phone_normalize(typed, region=region) == expected


@pytest.mark.parametrize(
    ("typed", "region", "code"),
    [
        ("13800138000", Region.OTHER, "country_code"),  # outside the mainland: say the country
        ("2015550123", None, "country_code"),
        ("+447911123456", Region.MAINLAND_CHINA, "not_mainland"),
        ("12345", Region.MAINLAND_CHINA, "invalid"),
        ("+86 10 6552 9988", Region.MAINLAND_CHINA, "not_mobile"),  # a Beijing landline
        ("not a number", Region.OTHER, "country_code"),
        ("+", Region.OTHER, "invalid"),
        ("", Region.OTHER, "required"),
    ],
)
def test_it_rejects_numbers_it_cannot_text(typed, region, code):
    with pytest.raises(ValidationError) as caught:
        phone_normalize(typed, region=region)
    assert caught.value.code == code


def test_it_reads_one_box_as_email_or_phone():
    assert identifier_parse(" Ann@Example.COM ", region=Region.OTHER) == (
        "email",
        "ann@example.com",
    )
    assert identifier_parse("13800138000", region=Region.MAINLAND_CHINA) == (
        "phone",
        "+8613800138000",
    )


def test_it_refuses_an_email_for_a_mainland_account():
    with pytest.raises(ValidationError) as caught:
        identifier_parse("ann@example.com", region=Region.MAINLAND_CHINA)
    assert caught.value.code == "email_in_mainland"


def test_it_refuses_a_malformed_email():
    with pytest.raises(ValidationError):
        identifier_parse("ann@", region=Region.OTHER)


def test_it_masks_phone_numbers_for_logs():
    assert phone_mask("+8613800138000") == "+86 138****8000"
    assert "0123" in phone_mask("+12015550123")
    assert "555" not in phone_mask("+12015550123")[4:]
