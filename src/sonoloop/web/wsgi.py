"""The WSGI application served by gunicorn.

Chunked request bodies (STOW-RS clients stream them) are not buffered here: a view reads
them, after it has checked the sender, with :func:`sonoloop.web.bodies.read_body`.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sonoloop.web.settings")

application = get_wsgi_application()
