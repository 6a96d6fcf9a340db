"""Speed and memory measurements behind ``python -m diffusion.bench``.

``measure`` holds the clocks, memory meters and FLOP counts; ``ours`` and ``diffusers_side``
the two implementations measured side by side; ``run`` builds, times and reports them.
"""
