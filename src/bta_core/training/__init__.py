"""Training the BTA model (``bta-core train``, the napari Train panel, ``tools/train_default.py``).

``config`` holds the recipe (``TrainConfig``, stages, the cosine schedule), ``loop`` the stage
loop on images (Barlow Twins, head, combined, SimCLR; cancel, resume, DDP), ``state`` the
resumable training state, ``log`` progress lines and ``OUT.stats.jsonl``. The CPU recipe of the
bundled default trains on cached frozen-backbone features: ``view_cache`` builds the cache,
``features`` trains projector and head on it.
"""
