"""Simulated 720p cameras: sources, JPEG encoding, pacing and MQTT/CoAP transports.

The first role in the flow of a frame: cameras -> gateway -> cloud. The cloud's trainer
imports :mod:`cameras.datasets` and :mod:`cameras.scene` to render training data exactly
the way the cameras render what they send.
"""
