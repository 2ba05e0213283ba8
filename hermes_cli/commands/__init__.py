"""One module per command; each parses options and calls one hermes_model function."""
