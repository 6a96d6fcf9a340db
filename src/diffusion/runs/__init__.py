"""Run folders: making one and recording what a run did (``folder``), one writer at a time
(``lock``), loading one back without Hydra (``load``), and the records others read
(``records``: portable paths, ``eval.json``)."""
