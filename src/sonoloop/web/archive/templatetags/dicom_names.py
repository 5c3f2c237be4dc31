from django import template

from sonoloop.dicom.names import format_date, format_person_name

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """``{{ patient.patient_name|person_name }}``: Family, Given (see dicom.names)."""
    return format_person_name(value)


@register.filter
def dicom_date(value: str) -> str:
    """``{{ study.study_date|dicom_date }}``: 2019-01-24."""
    return format_date(value)
