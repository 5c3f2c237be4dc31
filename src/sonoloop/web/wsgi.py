"""The WSGI application served by gunicorn."""

import io
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sonoloop.web.settings")


class ChunkedRequestBodies:
    """Give Django a Content-Length for chunked request bodies (STOW-RS clients stream them).

    Django reads exactly CONTENT_LENGTH bytes and sees an empty body otherwise; gunicorn
    de-chunks the input and marks it ``wsgi.input_terminated``.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, environ, start_response):
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read(self.max_bytes + 1)
            if len(body) > self.max_bytes:
                start_response("413 Content Too Large", [("Content-Type", "application/json")])
                return [b'{"error": "the request body is larger than SONOLOOP_MAX_INSTANCE_MB allows"}']
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


def _build():
    from django.conf import settings

    django_app = get_wsgi_application()
    return ChunkedRequestBodies(django_app, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


application = _build()
