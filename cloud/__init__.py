"""The cloud: the third role in the flow of a frame.

``consumer`` answers features with the upper layers (``serving`` finds them in the
``registry``), scores results (``scoring``) and stores labeled features (``feature_store``);
``bootstrap`` and ``training_jobs`` train models, ``models`` holds how they are built, split
and exported; ``scheduling`` decides how many layers each gateway runs; ``cli`` is the
``edgelearn cloud|model|train`` commands.
"""
