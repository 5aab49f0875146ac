"""Groups of CLI commands, each registering itself on the main Typer app.

A module here defines ``register(app)``; command bodies import heavy modules
lazily so ``labctl --help`` stays fast. Shared helpers live in ``_common``
(modules whose name starts with ``_`` register nothing).
"""
