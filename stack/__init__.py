"""The top of the house: the ``edgelearn`` command and the whole local stack.

- :mod:`stack.cli`: the ``edgelearn`` command; each role's subcommand lives beside its code;
- :mod:`stack.launcher`: starts brokers (bridged), the cloud, a gateway pool, cameras and
  Prometheus as child processes, in that order; ``edgelearn up`` and ``edgelearn bench
  pipeline`` both start the stack through it;
- :mod:`stack.up`: ``edgelearn up``, the stack on defaults with a live summary;
- :mod:`stack.report`: ``edgelearn report``, PNG charts of a run;
- :mod:`stack.broker`: broker secrets and ACL (``broker init``) and running mosquitto from
  the templates in the top-level ``mosquitto/``.

This package may import every role; no role imports it (see the layer contract in
``pyproject.toml``). Benchmarks live beside it, in :mod:`bench`.
"""
