"""Gateway workers at the edge: the second role in the flow of a frame.

Frames arrive over an MQTT v5 shared subscription or CoAP (``service``), wait in per-camera
newest-wins queues (``queues``), pass the keyframe filter (``keyframes``) and, for keyframes,
the current mode's extractor (``pipeline``: raw, pca, autoencoder, split:k, full) before
going upstream as compact features. ``preprocess`` is the one definition of how a JPEG
becomes model input, shared with the cloud's trainer. Nothing here imports TensorFlow.
"""
