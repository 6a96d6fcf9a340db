"""The exact-score referee for samplers: Gaussian mixtures with closed-form scores
(``mixtures``), the harness that scores every sampler against them (``run``), and its report
(``report``)."""
