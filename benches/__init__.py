"""Benchmark harness for livecomments: SSE fan-out load, slow consumers, and Nchan side by side.

Entry points: ``livecomments bench ...`` (wired to :func:`benches.cli.main`) and
``python -m benches ...``. See ``docs/performance.md`` for the method and the results.
"""
