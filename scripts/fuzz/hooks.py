"""Schemathesis hooks for countersign: real credentials of the kind the run
is about (CS_CREDENTIAL = service | run | executor | none).

Run tokens: five refusals in a row revoke a run by design (a confused or
hostile agent is stopped), and a run's budget runs out, so one token would go
blind within a second of fuzzing. Each worker holds its own run token and
mints a fresh one (with the service key, outside the fuzzed requests) as soon
as the server answers 401 or 429 to it, and after a batch of requests. A
token changes only between requests of one worker, so a proposal made in a
stateful sequence is read back with the token of the run that made it.
"""

import json
import os
import threading
import urllib.request

import schemathesis

KIND = os.environ.get("CS_CREDENTIAL", "none")
BASE = os.environ["CS_BASE_URL"]
SERVICE_KEY = os.environ["CS_SERVICE_KEY"]
EXECUTOR_KEY = os.environ["CS_EXECUTOR_KEY"]
ROUTE = os.environ.get("CS_ROUTE", "support/send")
BATCH = 200

worker = threading.local()
minted = 0
minted_lock = threading.Lock()


def mint_run_token() -> str:
    global minted
    body = json.dumps({"route": ROUTE, "ttl_seconds": 900}).encode()
    req = urllib.request.Request(
        f"{BASE}/api/v1/runs",
        data=body,
        method="POST",
        headers={"authorization": f"Bearer {SERVICE_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        token = json.load(r)["token"]
    with minted_lock:
        minted += 1
    return token


def run_token() -> str:
    if getattr(worker, "token", None) is None or worker.uses >= BATCH:
        worker.token, worker.uses = mint_run_token(), 0
    worker.uses += 1
    return worker.token


if KIND != "none":

    @schemathesis.auth(refresh_interval=None)
    class Credential:
        def get(self, case, ctx):
            if KIND == "service":
                return SERVICE_KEY
            if KIND == "executor":
                return EXECUTOR_KEY
            return run_token()

        def set(self, case, data, ctx):
            case.headers = case.headers or {}
            case.headers["Authorization"] = f"Bearer {data}"


if KIND == "run":

    @schemathesis.hook
    def after_call(ctx, case, response):
        # The run was revoked, expired or spent: this worker's next request
        # goes out under a fresh one.
        sent = (case.headers or {}).get("Authorization", "")
        if response.status_code in (401, 429) and sent == f"Bearer {getattr(worker, 'token', None)}":
            worker.token = None


# The short form (CI) does not sit in long polls: a wait the fuzzer asks for
# is cut to a second just before the request goes out (in every phase). The
# long form (CS_FUZZ_LONG=1) waits as asked.
if not os.environ.get("CS_FUZZ_LONG"):

    @schemathesis.hook
    def before_call(ctx, case, **kwargs):
        query, body = case.query, case.body
        if isinstance(query, dict) and isinstance(query.get("timeout_seconds"), int) and query["timeout_seconds"] > 1:
            query["timeout_seconds"] = 1
        if isinstance(body, dict) and isinstance(body.get("wait_seconds"), int) and body["wait_seconds"] > 1:
            body["wait_seconds"] = 1
