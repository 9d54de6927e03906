"""The cloud's models: data, training, splitting, int8 export, profiles and artifact formats.

Modules, in the order a model is made (TensorFlow is imported lazily, inside functions, and
never by the modules marked *gateway-safe*, which the gateway imports):

=================  ===========================================================================
``data``           labeled items rendered as camera frames through ``edgelearn.preprocess``
                   (gateway-safe: numpy + OpenCV)
``cnn``            the MobileNet-style split CNN, ``split(model, k)`` and its check
``features``       PCA and the autoencoder (the feature modes) and the feature classifier
``training``       cloud-only vs from-stored-features training, fine-tuning the upper part
``export``         Keras -> int8 (or float) LiteRT, calibrated on real rendered frames
``profile``        per-boundary output size and FLOPs, the scheduler's table
``evaluation``     accuracy on the served (int8) paths, render-path check, latency
``artifacts``      artifact formats and the loader gateways run them with (gateway-safe)
``release``        export + score + profile + save to ``cloud.registry``
``benchmark``      ``python -m cloud.models.benchmark``: raw vs stored-feature training, per-k table
``errors``         the exception tree
=================  ===========================================================================

This package imports nothing on purpose: ``import edgelearn.artifacts`` must not pull in
TensorFlow on a gateway.
"""
