"""Figures and report tables of runs and sweeps: grids and GIFs that label themselves
(``pictures``), pictures of the diffusion process and curves (``figures``), and a sweep's README
with its tables and plots (``sweeps``)."""
