"""Gateway workers at the edge: the second role in the flow of a frame.

Frames arrive over an MQTT v5 shared subscription or CoAP (``service``, ``coap``), are
checked and wait in per-camera newest-wins queues (``ingest``, which also holds the drop
policy), pass the keyframe filter and, for keyframes, the current mode's extractor
(``pipeline``: raw, pca, autoencoder, split:k, full, deployed by ``model_slot``) before going
upstream as compact features, kept until the cloud acknowledges them (``uplink``,
``outbox``). ``service`` puts a worker together from these parts, ``status`` reports it.
What the gateway shares with the cloud (model input, the artifact loader, the feature
codec, the modes) lives in the floor, :mod:`edgelearn`. Nothing here imports TensorFlow, or
another role.
"""
