"""CLI commands that live outside ``lookalike.cli`` (imported at the end of it to register)."""
