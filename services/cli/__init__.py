"""`notifications`: the command-line client of the admin API, for scripts and terminals."""
