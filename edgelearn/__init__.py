"""edgelearn's shared floor: what the roles share, written once. It imports no role.

- :mod:`edgelearn.wire`: versioned envelopes and topic names (the only wire parser);
- :mod:`edgelearn.modes`: the gateway modes and their one text form;
- :mod:`edgelearn.preprocess`: camera frames as JPEG (the one encoder) and as model input
  (reduced decode, centre square);
- :mod:`edgelearn.codec`: feature quantisation and entropy coding, and the one feature
  decoder;
- :mod:`edgelearn.artifacts`: the TensorFlow-free edge artifact formats and their loader;
- :mod:`edgelearn.datasets`: labeled image data sets (Fashion-MNIST, a user's folder);
- :mod:`edgelearn.mqtt`: the self-reconnecting MQTT v5 session of the services;
- :mod:`edgelearn.config`, :mod:`edgelearn.secrets`: typed settings and credentials;
- :mod:`edgelearn.signing`: Ed25519 model signatures;
- :mod:`edgelearn.metrics`: build info, the ``/metrics`` endpoint, and reading it back;
- :mod:`edgelearn.ports`: the one free-port helper.

The roles live in the sibling packages ``cameras``, ``gateway`` and ``cloud``; the
``edgelearn`` command, the stack runner and the report in ``stack``; benchmarks in ``bench``.
"""
