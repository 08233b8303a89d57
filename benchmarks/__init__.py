"""What ``cover-bench`` measures (the command itself is ``cover_engine.runtime.cli.bench``).

``run.py`` (:func:`~.run.run_bench`, the whole benchmark), ``clips.py`` (synthetic clips and
their cache), ``probes.py`` (one row per backend), ``measure.py`` (latency, throughput, memory),
``machine.py`` (machine facts and versions), ``stages.py`` (clocks and statistics),
``report.py`` (table, JSON, plot). Everything but the torch rows imports without torch.
"""
