"""A Content-Security-Policy on every response: the pages run only Sonoloop's own scripts.

The viewer needs WebAssembly (codecs) and workers; styles set by scripts and SVG style
attributes need 'unsafe-inline' for styles only. No inline script runs anywhere (the page
configuration travels as a JSON data block, which is not executed).
"""

POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "worker-src 'self' blob:",
    "img-src 'self' data: blob:",
    "style-src 'self' 'unsafe-inline'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


class ContentSecurityPolicy:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response
