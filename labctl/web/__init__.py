"""``labctl serve``: a small live web page over the read models and the event log.

Stdlib asyncio serves HTTP; JSON endpoints run the same queries as the CLI on
pooled autocommit connections; one LISTEN follower feeds every page's
Server-Sent Events stream.
"""

from labctl.web.server import parse_bind, run_server, serve

__all__ = ["parse_bind", "run_server", "serve"]
