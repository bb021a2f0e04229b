"""Benchmarks of balsam_sync against the local REAL Balsam server, side by side in one run.

Run it with ``python scripts/bench.py`` (``--help`` lists the options). Every figure is measured
in this run, next to its reference, and reported as a median of several repetitions (with
min/max) and as a ratio, because the machine is small and noisy:

  P1  cached ``Job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")
      [0:1000]`` (after ``client.pull()``) vs the same query ``.online()`` vs upstream
      ``balsam.api`` (run in the server's venv)                          target: >= 50x faster
  P4  initial ``client.pull()`` of the jobs into a fresh mirror vs ``list(Job.objects.online()
      .all())`` vs upstream ``list(Job.objects.all())``       target: <= 0.4x upstream (anchors)
  P5  incremental pull after 100 job changes vs ``pull(full=True)``           target: <= 5 %
  P6  offline ``count()`` with filters on a 1M-job mirror                     target: < 50 ms
  P7  peak RSS while iterating 1M cached jobs (fresh subprocess)              target: < 200 MB
  P2  offline ``Job.objects.bulk_create`` of 10k jobs vs sqlite-utils ``insert_all``  <= 3x
  P3  replay of those queued creates (``client.push()``) vs a direct online bulk_create <= 1.1x
  P8  writes while the server is unreachable or busy; the daemon's time to stop  (p8.py)
  P9  online writes (``save()``, ``bulk_create`` of 100, query ``update()`` of 100, the guide's
      FAILED -> RESTART_READY loop) vs upstream ``balsam.api``, interleaved, requests counted
      by a relay; on an account of ~20k jobs (70 % finished) beside >= 200k jobs of other
      users              target: requests <= upstream's, time <= 1.2x upstream  (p9.py)
  A1-A6  pull figures on an account-shaped data set                   (account.py, a*.py)
  A7  peak RSS of a first pull of a 200k-job account vs upstream listing it   target <= 0.5x
  D1  a daemon every 5 s on keep-alive connections for 10 min: queries right after each round
      from the mirror, ``as_of`` within 30 s of real time, idle rounds' bytes flat  (d1.py)

The jobs data set is created through the real server for a freshly registered user (100k jobs
in POSTs of 5000, half tagged ``exp:p1``, half ``exp:p2``; ~6 % FAILED p1 jobs and other states
set by query updates on id lists; ``data_jobs.py``). Results go to ``results/bench.md``,
``results/bench.json`` and ``results/bench.png`` (when matplotlib is installed; ``report.py``).

Modules: ``harness`` (timing, statistics, result rows, child processes), ``memory`` (RSS, and
the P7 child), ``server`` and ``upstream`` (the REST API raw, and upstream ``balsam.api`` in the
server's venv running ``upstream_child.py``), ``database`` (the server's PostgreSQL, counted
directly), ``data_jobs`` / ``data_account`` (data sets),
``context`` (what figures share), one module per figure, ``profiles``, ``report``, ``cli``.
"""
