"""Layer-placement scheduling for the cloud side of edgelearn (paper 003).

The cloud decides, for each deep-learning task fed by the camera network, which edge server
(gateway) runs its first ``k`` CNN layers, so that the gateway uploads the layer-``k`` features
instead of raw frames. Servers have limited compute and uplink bandwidth and every task has a
latency bound; the goal is to deploy as many tasks as possible.

Modules, in the order a reader needs them:

* ``problem`` - the problem as validated arrays, the ``Assignment`` answer and its checker;
* ``offline`` - the paper's offline algorithm and the fixed-``k`` baseline;
* ``improved`` - our schedulers (balanced greedy; LP-guided diving);
* ``online`` - the paper's online threshold algorithm, FIFO and LBF;
* ``exact`` - the MILP optimum (HiGHS via SciPy) and a brute force for tiny instances;
* ``profiles`` - ``r_k``/``l_k`` measured from Keras CNNs, cached in ``data/cnn_profiles.json``;
* ``simulate`` - the paper's Fig. 4a/4b experiments; ``bench`` - quality and speed numbers;
* ``cli`` - ``edgelearn schedule simulate``.

Everything except ``cli``/``simulate`` output and ``profiles.regenerate_profiles`` is pure
computation; TensorFlow is imported only when profiles are rebuilt.
"""
