"""SMS gateway sandbox: the external sending contract, with faults and a ledger.

Run it with ``python -m services.sandbox`` (or `SandboxProcess` from tests). It speaks
the external gateway's contract (docs/development.md#the-gateway-sandbox)::

    POST /v1/send/{msgId}     Authorization: Bearer <token>
    {"id": msgId, "phone": 79111234567, "text": "..."}  ->  200 {"code":0,"message":"OK"}

(so the services' ``PROVIDER_URL`` is ``http://<host>:<port>/v1``), answering 401 to a
missing or wrong token and 400 to a body that is not that shape or whose ``id`` is not
the msgId. The send path is a bare ASGI callable on uvicorn + httptools + uvloop;
everything else is a FastAPI app (``/docs``) on the same port and on a control port.

Layout:
    faults.py    `Faults` (validated settings) and `FaultPlan` (the seeded draws)
    ledger.py    `Ledger`: every request in compact arrays; summary, entries, accepted
    state.py     `SandboxState`: token, plan, ledger, outages
    app.py       the hot path and the dispatch to the control app (decision order)
    routes/      the control and ledger endpoints
    server.py    uvicorn on two sockets, stopping/restarting the sends listener
    client.py    `SandboxControl`: typed async client of the control endpoints
    process.py   `SandboxProcess`: the sandbox as a child process, for tests/benchmarks
    ceiling.py   `measure_ceiling()`: requests/s of the sandbox alone

Settings (environment, `.env`, then flags of the same name, which win):

    SANDBOX_HOST          --host           127.0.0.1
    SANDBOX_PORT          --port           8090   sends (the control API is served too)
    SANDBOX_CONTROL_PORT  --control-port   8091   the same app on a second port that a
                                                  `refuse` outage never closes (use it
                                                  for control while one may be on)
    SANDBOX_TOKEN         --token          sandbox-token  the exact bearer value expected
                                                  (the services' PROVIDER_TOKEN; "*":
                                                  any non-empty token, e.g. a real JWT)
    SANDBOX_LEDGER_TEXT   --[no-]ledger-text  true   keep phone and text per request
    SANDBOX_OUTAGE        --outage         unset  "refuse:20", "503:5", "503" (no end)
    SANDBOX_KEEP_ALIVE_S  --keep-alive-s   75     idle keep-alive before the server closes
    SANDBOX_FAULTS        --faults         JSON object of fault settings, e.g.
                                           '{"error_5xx": 0.3, "seed": 1}'
    SANDBOX_FAULTS__<FIELD>  --<field>     one fault setting, e.g. SANDBOX_FAULTS__HANG=0.01
                                           or --error-429 0.1 (flags use dashes)

Fault fields (`Faults`; at run time GET/PUT/PATCH /control/faults):
    latency_ms              fixed delay before every answer (ms), default 0
    latency_min_ms, latency_max_ms   uniform random delay instead (both or neither)
    error_5xx               share answered 500/502/503 (random among the three)
    error_429               share answered 429 with ``Retry-After: retry_after_s``
    retry_after_s           default 1
    retry_after             Retry-After sent verbatim instead (an HTTP date, ``1e12``,
                            ``inf``...), default none
    malformed               share answered 200 with a body that is not the contract's
                            (``{"code":"OK"}``, a non-zero code, plain ``OK``, an HTML
                            page, an empty or a truncated body)
    hang                    share never answered: held until the client disconnects, or
                            for ``hang_s`` (default 300) and then answered 504
    seed                    seed of the draws; null: a random one (shown in
                            GET /control/state). With a seed, POST /ledger/reset and PUT
                            restart the draws, so a run can be replayed.

Draws are independent, in the fixed order 5xx, 429, malformed, hang, and the first hit
wins (the effective shares are in GET /control/state). Faults apply only to requests
that passed the token and body checks. Only a 200 with the documented body counts as
"accepted" in the ledger.

Outages (POST /control/outage {"mode": "refuse"|"503", "seconds": 20 | null};
DELETE /control/outage ends one): ``refuse`` closes the sends port's listening socket
and its open connections, so clients get "connection refused" (nothing reaches the
ledger then), and binds it again at the end; ``503`` answers 503 to every send (kind
``outage`` in the ledger).

Ledger: GET /ledger/summary, GET /ledger?msg_id=&accepted=&answer=&limit=&offset=,
GET /ledger/accepted ([[msgId, arrival_epoch_seconds], ...]), POST /ledger/reset.
Arrival times are UTC epoch seconds from a monotonic clock anchored at start.

Logs (shared.logging, LOG_* variables of shared.settings): start, fault changes,
outages and resets; never one line per request.
"""
