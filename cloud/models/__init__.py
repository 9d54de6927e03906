"""The cloud's models: data, training, splitting, int8 export and profiles.

Modules, in the order a model is made (TensorFlow is imported lazily, inside functions):

=================  ===========================================================================
``data``           labeled items rendered as camera frames through ``edgelearn.preprocess``
                   (numpy + OpenCV)
``cnn``            the MobileNet-style split CNN, ``split(model, k)`` and its check
``features``       PCA and the autoencoder (the feature modes) and the feature classifier
``training``       cloud-only vs from-stored-features training, fine-tuning a cloud half
``export``         Keras -> int8 LiteRT, calibrated on real rendered frames
``profile``        per-boundary output size and FLOPs, the scheduler's table
``evaluation``     accuracy on the served (int8) paths, render-path check, latency
``release``        export + score + profile + save to ``cloud.registry``
``errors``         the exception tree
=================  ===========================================================================

The edge artifact formats and the TensorFlow-free loader the gateways run them with are in
the floor, :mod:`edgelearn.artifacts`, since gateways and the cloud both use them.
"""
