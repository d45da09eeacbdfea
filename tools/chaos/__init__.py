"""The chaos soak (`make chaos`, `python -m tools.chaos`): the whole stack on this
machine under `kill -9`, PostgreSQL and Kafka restarts, a gateway outage and gateway
faults, judged on the gateway's ledger. See `tools/chaos/report.py` for what each
figure means and `tools/chaos/workload.py` for what each client expects."""
