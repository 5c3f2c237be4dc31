from django import template

from sonoloop.dicom.names import format_person_name

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """``{{ patient.patient_name|person_name }}``: Family, Given (see dicom.names)."""
    return format_person_name(value)
