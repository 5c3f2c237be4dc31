import pytest

from sonoloop.dicom.names import format_person_name


@pytest.mark.parametrize("raw, shown", [
    ("Citizen^Jan", "Citizen, Jan"),
    ("Buc^Jérôme", "Buc, Jérôme"),
    ("Smith^John^Paul^Dr^Jr", "Smith, Dr John Paul, Jr"),
    ("Anonymized", "Anonymized"),
    ("^Cher", "Cher"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou (山田 太郎; やまだ たろう)"),
    ("=김희중", "김희중"),
    ("", ""),
])
def test_person_names_are_shown_family_comma_given(raw, shown):
    assert format_person_name(raw) == shown


@pytest.mark.parametrize("raw, shown", [("20190124", "2019-01-24"), ("1994.01.", "1994.01."), ("", "")])
def test_dates_are_shown_with_dashes_when_they_are_full_dates(raw, shown):
    from sonoloop.dicom.names import format_date

    assert format_date(raw) == shown
