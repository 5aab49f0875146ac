"""``labctl serve``: the dashboard a lab keeps open all day.

Starlette on uvicorn; pages rendered on the server (Jinja2, autoescaped) with
SVG plots and graphs; ``static/live.js`` keeps them live over one Server-Sent
Events stream of the log; a JSON API with the original labctl's routes.
"""

from labctl.web.server import allowed_hosts, is_loopback, parse_bind, run_server, serve

__all__ = ["allowed_hosts", "is_loopback", "parse_bind", "run_server", "serve"]
