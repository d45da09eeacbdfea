"""Developer tooling: real infrastructure for tests and the local stack."""
