"""Model + scheduler -> images: the pipeline (``pipeline``), classifier-free and classifier
guidance around the model's forward (``guidance``), a sampler as the ``sampler`` config group
states it (``sampler``) and the sampling arguments' rules (``checks``)."""
