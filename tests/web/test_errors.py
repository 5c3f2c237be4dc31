"""Service errors become HTTP answers in one place (web/errors.py)."""

import json

import pytest
from django.test import RequestFactory

from sonoloop.web.analysis.services import RetryError
from sonoloop.web.annotations.document import DocumentError
from sonoloop.web.annotations.services import NotAllowed as AnnotationNotAllowed, StatusError
from sonoloop.web.errors import ServiceError, json_errors
from sonoloop.web.learning.services import Conflict, LearningError, NotAllowed as LearningNotAllowed


@pytest.mark.parametrize("error, status", [
    (DocumentError("masks[5]: the frame has 240×320 pixels"), 400),
    (LearningError("unknown mixing strategy"), 400),
    (AnnotationNotAllowed("needs the reviewer role"), 403),
    (LearningNotAllowed("only an admin promotes"), 403),
    (StatusError("an approved annotation cannot become draft"), 409),
    (Conflict("tiny-b has not been evaluated"), 409),
    (RetryError("job 3 is running"), 409),
])
def test_each_service_error_answers_its_status_with_its_message(error, status):
    assert isinstance(error, ServiceError)

    @json_errors
    def view(request):
        raise error

    response = view(RequestFactory().get("/"))
    assert response.status_code == status and json.loads(response.content) == {"error": str(error)}


def test_other_exceptions_are_not_turned_into_answers():
    @json_errors
    def view(request):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        view(RequestFactory().get("/"))
