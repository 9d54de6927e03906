"""edgelearn's shared package: what every role needs and nothing else.

- :mod:`edgelearn.wire`: versioned envelopes and topic names (the only wire parser);
- :mod:`edgelearn.codec`: feature quantisation and entropy coding;
- :mod:`edgelearn.config`, :mod:`edgelearn.secrets`: typed settings and credentials;
- :mod:`edgelearn.metrics`: build info and the ``/metrics`` endpoint;
- :mod:`edgelearn.signing`: Ed25519 model signatures;
- :mod:`edgelearn.broker`: mosquitto configuration and process control;
- :mod:`edgelearn.cli`: the ``edgelearn`` command.

Roles live in the sibling packages ``cameras``, ``gateway`` and ``cloud``.
"""
