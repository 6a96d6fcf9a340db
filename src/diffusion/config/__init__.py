"""The config layer, between the commands and the library: the only code besides the commands
that reads Hydra or OmegaConf. It composes a command's jobs (``preflight``), knows each
command's keys (``keys``) and earlier versions' (``legacy``), checks every option before any
work (``preflight``, ``options``, with the rules of ``diffusion.checks``) and builds library
objects from config nodes (``build``, ``sampler``, ``guidance``, ``metrics``, ``runs``)."""
