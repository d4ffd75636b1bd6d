"""keyguard's forward auth against the peer: djangorestframework-api-key on Django.

The same wrk load as :mod:`benchmarks.forward` against ``keyguard serve --workers 2``
and against ``HasAPIKey`` on a minimal DRF view (:mod:`benchmarks.drf_app`),
served by uvicorn with 2 workers too, each holding the same number of keys,
in alternating rounds. Each side answers the question it is built for with a
valid key: keyguard whether the key may make ``POST /v3/messages``, DRF whether
the key may call its view (a prefix lookup in SQLite, then a SHA-512 check).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import drf_app
from benchmarks.context import Context
from benchmarks.forward import KEYS, WORKERS, describe, keyguard_forward, side_by_side
from benchmarks.load import Target
from benchmarks.report import Section, comparison_table
from benchmarks.server import BENCHMARKS_ROOT, running_asgi

SETUP_TIMEOUT = 120.0


def run(context: Context) -> Section:
    with tempfile.TemporaryDirectory(prefix="keyguard-bench-drf-") as folder:
        env = {**os.environ, drf_app.DATABASE_VARIABLE: str(Path(folder) / "drf.sqlite3")}
        # Django's database is prepared in its own process while keyguard's is seeded.
        setup = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.drf_app", str(KEYS)],
            cwd=BENCHMARKS_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with keyguard_forward() as (_, keyguard):
                out, err = setup.communicate(timeout=SETUP_TIMEOUT)
                if setup.returncode != 0:
                    raise RuntimeError(f"the Django project could not be prepared:\n{err}")
                key = json.loads(out)["key"]
                app = f"{drf_app.__name__}:create_app"
                with running_asgi(app, WORKERS, factory=True, env=env) as drf_url:
                    peer: Target = (drf_url + drf_app.PATH, {"Authorization": f"Api-Key {key}"})
                    contest = side_by_side(context, ("drf", "keyguard"), peer, keyguard)
        finally:
            if setup.poll() is None:
                setup.kill()
                setup.wait()
    section = Section("drf", f"keyguard against djangorestframework-api-key: {KEYS:,} keys each")
    section.tables.append(
        comparison_table(
            f"1. A valid key under the same load, uvicorn with {WORKERS} workers each",
            ("DRF HasAPIKey, GET /hello", "keyguard /auth/forward", "keyguard / DRF"),
            contest.comparison,
        )
    )
    describe(section, context, contest, None)
    section.notes.append(
        "DRF is set up in its favour: no middleware, no authentication classes, JSON "
        "renderer only, persistent SQLite connections; keys created with "
        "APIKey.objects.create_key (SHA-512 hasher)."
    )
    return section
