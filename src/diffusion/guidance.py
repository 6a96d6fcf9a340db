"""``from diffusion.guidance import Guidance``: guidance lives in ``diffusion.sampling``;
this name keeps working."""
from diffusion.sampling.guidance import Guidance

__all__ = ["Guidance"]
