"""Evaluation of models and baselines on the same image pairs (``bta-core eval``).

``datasets`` decodes the images, ``pairs`` draws pairs and manipulations, ``methods`` scores
them (checkpoints and baselines; ``crophash`` is the fast crop-resistant hash), ``views``
represents every image view once per method for all resamples and protocols, ``metrics``
turns scores into figures (scikit-learn), ``protocols`` runs the paper/reuse/scan protocols, ``report`` writes tables and plots and
``calibrate`` fits a checkpoint's threshold.
"""
