"""`make bench`: the whole pipeline on one big mailing, end to end, on this machine.

    python -m tools.infra run -- python -m tools.bench [--clients 100000] [--timeout 600]
        [--dispatchers 1] [--log-level INFO] [--json PATH] [--baseline PATH]
        [--fast-postgres] [--keep]

Starts a PostgreSQL server of its own with PostgreSQL's durable defaults (fsync,
synchronous_commit and full_page_writes on, as a deployment runs; `--fast-postgres`:
all three off, as the tests run it) and reads the live values back for the report's
header; creates a database in it (migrated), a Kafka topic prefix of its own and a
zero-fault gateway sandbox (compact ledger); starts api, scheduler, reporter and
dispatcher(s) as processes; loads N clients tagged `bench` straight into PostgreSQL;
creates one mailing for the tag through the API and measures, from just before that POST:

* audience expansion: until all N messages exist (and the scheduler's own figure);
* end to end: N / (last gateway arrival - t0), and the wall time until the bench saw it;
* the start: the time to the first message at the gateway, and the rate over the first
  10 s against the whole run's (a slow start shows as a ratio well under 1);
* due -> gateway latency per message (due_at to its first accepted arrival);
* duplicates at the gateway, requests against accepted;
* peak RSS of every process (PostgreSQL's backends summed, and its PSS, which does not
  count shared buffers once per backend; Kafka's JVM), sampled every 0.5 s (psutil);
* CPU seconds per process from t0, CPU milliseconds per delivered message (steadier
  than msg/s on a shared machine) and how busy the whole machine was: `other` is CPU
  used by processes outside the pipeline, e.g. a test run on the same cores;
* the sandbox's ceiling measured alone afterwards, and the share of it the pipeline used.

A progress line every 5 s (accepted so far, messages by status, outbox backlog, CPU per
process) shows where messages sit if the pipeline is slow. Everything it started is
stopped and its database dropped (unless --keep), also on Ctrl-C or failure; the logs
(services' JSON log, stderr, sandbox) are kept when the run fails.

Exit code: 0 when all N messages reached the gateway exactly once; 1 when it timed
out, stalled or saw duplicates (the report says how far it got). At ~500 msg/s a
mailing of 10**6 takes over half an hour: give `--timeout` accordingly.

`--json PATH` writes the results, and their headline figures under "figures";
`--baseline PATH` (a previous run's `--json`) prints each figure next to the
baseline's, with the ratio this / baseline.

Needs KAFKA_BOOTSTRAP (run it under `python -m tools.infra run`; the PostgreSQL that
starts there is not used).

The package: `pipeline` drives the run (`Bench`), `sampling` watches the processes
(`Sampler`, psutil), `report` holds the results and renders the table, `figures`
the headline figures and their comparison, `cli` is the command line.
"""
