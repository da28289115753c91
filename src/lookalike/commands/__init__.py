"""CLI commands that live outside ``lookalike.cli``: each module has its own ``commands`` Typer,
which ``lookalike.cli`` adds to the ``lookalike`` app; what they share is in ``common.py``."""
