"""keyguard's forward auth against the peer: djangorestframework-api-key on Django.

The same wrk load as :mod:`benchmarks.forward` against ``keyguard serve --workers 2``
and against ``HasAPIKey`` on a minimal DRF view (:mod:`benchmarks.drf_app`),
each holding the same number of keys, in alternating rounds. DRF is served
twice, each time with 2 workers, one after the other against the same keyguard:
through Django's ASGI handler under uvicorn (keyguard's own server), and
through WSGI under gunicorn's sync workers, the way Django projects are most
often deployed; the better of the two is DRF's figure. Each side answers the
question it is built for with a valid key: keyguard whether the key may make
``POST /v3/messages``, DRF whether the key may call its view (a prefix lookup in
SQLite, then a SHA-512 check).
"""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from benchmarks import drf_app
from benchmarks.context import Context
from benchmarks.forward import (
    KEYS,
    WORKERS,
    Contest,
    contest_table,
    describe,
    keyguard_forward,
    side_by_side,
)
from benchmarks.load import Target
from benchmarks.report import Section
from benchmarks.server import BENCHMARKS_ROOT, running_asgi, running_wsgi
from benchmarks.stats import median

SETUP_TIMEOUT = 120.0
ROUNDS = 3  # per server; the two differ by far more than the rounds do

Serve = Callable[[dict[str, str]], AbstractContextManager[str]]
SERVERS: dict[str, tuple[str, Serve]] = {
    "uvicorn": (
        "Django ASGI under uvicorn",
        lambda env: running_asgi(f"{drf_app.__name__}:create_app", WORKERS, factory=True, env=env),
    ),
    "gunicorn": (
        "Django WSGI under gunicorn, sync workers",
        lambda env: running_wsgi(f"{drf_app.__name__}:create_wsgi_app()", WORKERS, env=env),
    ),
}


def start_setup(env: dict[str, str]) -> subprocess.Popen[str]:
    """Migrate Django's database and create its keys, in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.drf_app", str(KEYS)],
        cwd=BENCHMARKS_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_setup(setup: subprocess.Popen[str]) -> str:
    """The last key the setup created, once it is done."""
    out, err = setup.communicate(timeout=SETUP_TIMEOUT)
    if setup.returncode != 0:
        raise RuntimeError(f"the Django project could not be prepared:\n{err}")
    key: str = json.loads(out)["key"]
    return key


def run(context: Context) -> Section:
    contests: dict[str, Contest] = {}
    with tempfile.TemporaryDirectory(prefix="keyguard-bench-drf-") as folder:
        env = {**os.environ, drf_app.DATABASE_VARIABLE: str(Path(folder) / "drf.sqlite3")}
        setup = start_setup(env)  # Django's keys are made while keyguard's are seeded
        try:
            with keyguard_forward() as (_, keyguard):
                key = finish_setup(setup)
                for server, (_, serve) in SERVERS.items():
                    with serve(env) as drf_url:
                        url = drf_url + drf_app.PATH
                        peer: Target = (url, {"Authorization": f"Api-Key {key}"})
                        names = (f"drf_{server}", "keyguard")
                        contests[server] = side_by_side(context, names, peer, keyguard, ROUNDS)
        finally:
            if setup.poll() is None:
                setup.kill()
                setup.wait()
    best = max(contests, key=lambda server: median(contests[server].rates(f"drf_{server}")))
    section = Section("drf", f"keyguard against djangorestframework-api-key: {KEYS:,} keys each")
    for number, (server, contest) in enumerate(contests.items(), start=1):
        title, _ = SERVERS[server]
        section.tables.append(
            contest_table(
                f"{number}. A valid key under the same load, {WORKERS} workers each: DRF as "
                f"{title}" + (" (DRF's better)" if server == best else ""),
                ("DRF HasAPIKey", "keyguard", "keyguard / DRF"),
                contest,
            )
        )
    winner = contests[best]
    ratio = median(winner.rate_ratios())
    cpu = median(winner.cpu_ratios()) if winner.cpu_ratios() else None
    section.notes.append(
        f"DRF's better server here: {SERVERS[best][0]}; against it keyguard serves {ratio:.0f}x "
        "the requests/s"
        + (f" and spends 1/{cpu:.0f} of the server CPU per request." if cpu else ".")
    )
    describe(section, context, winner, None)
    section.notes.append(
        "DRF is set up in its favour: no middleware, no authentication classes, JSON "
        "renderer only, persistent SQLite connections; keys created with "
        "APIKey.objects.create_key (SHA-512 hasher). gunicorn's sync workers close each "
        "connection after one response, so wrk reconnects for every request there."
    )
    section.figures["servers"] = {
        server: {
            "title": SERVERS[server][0],
            "drf_requests_per_second_rounds": contest.rates(f"drf_{server}"),
            "keyguard_requests_per_second_rounds": contest.rates("keyguard"),
            "ratio_keyguard_over_drf_rounds": contest.rate_ratios(),
            "drf_cpu_microseconds_per_request_rounds": contest.cpu(f"drf_{server}"),
            "keyguard_cpu_microseconds_per_request_rounds": contest.cpu("keyguard"),
        }
        for server, contest in contests.items()
    }
    section.figures["better_drf_server"] = best
    return section
