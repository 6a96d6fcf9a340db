"""Model + scheduler -> images: the pipeline (``pipeline``; its editing methods ``edits``, its
draw shared out among ranks ``sharded``), classifier-free and classifier
guidance around the model's forward (``guidance``), a sampler as the ``sampler`` config group
states it (``sampler``) and the sampling arguments' rules (``checks``)."""
