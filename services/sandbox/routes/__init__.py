"""FastAPI routes of the sandbox (everything except the send hot path)."""
