"""Command-line interface of Hermes (``hermes`` / ``hermes-seg``). Thin: parse, call, print."""
