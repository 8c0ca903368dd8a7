"""The line at a glance: a read-only status page served by the gateway (issue 16).

`model.LineModel` keeps a bounded picture of the line from the records the runtime emits; `app.WebApp`
serves it (page, live stream, /healthz, /metrics); `server.serve_http` runs the listener in the runtime's
task group. The page itself is static files in `static/`: no build step, nothing loaded from outside.
"""

from emsedge.web.model import LineModel

__all__ = ["LineModel"]
