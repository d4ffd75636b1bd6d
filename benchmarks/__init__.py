"""keyguard's benchmarks: ``python -m benchmarks`` (``make bench``) runs them all.

Each benchmark is a module with a ``run(context) -> Section`` function, listed in
``__main__.BENCHMARKS``; :mod:`benchmarks.server` starts a real ``keyguard serve``
and :mod:`benchmarks.load` drives it with wrk or httpx.
"""
