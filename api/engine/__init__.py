"""Local inference engines: the vLLM-compatible simulator (default) and launch recipes."""
