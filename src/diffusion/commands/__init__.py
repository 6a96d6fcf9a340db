"""The commands (``python -m diffusion.<name>``), the top layer: each module parses its
command line, has ``diffusion.config`` check and build what it needs, calls the library and
ends through ``launcher``. Nothing else in the package imports them."""
