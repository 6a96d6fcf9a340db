"""Noise processes in continuous time, x_t = alpha(t) x_0 + sigma(t) eps (``base.Process``):
the VP (linear and cosine), sub-VP and VE SDEs of Song et al. 2021 (``sde.py``), EDM's process
(``edm.py``, Karras et al. 2022), flow matching's straight path (``straight.py``), and a DDPM
scheduler's discrete table seen in continuous time (``discrete.py``), so that the samplers and
likelihoods of the SDE view run on DDPM-trained models too.

>>> process = VPProcess()                       # beta in [0.1, 20], as Song et al.
>>> x_t = process.add_noise(x0, noise, t)       # t in [t_min, 1], one per sample
>>> f, g2 = process.sde(t)                      # dx = f x dt + g dW has these marginals
>>> score = process.score(model(x_t * process.c_in(t), process.model_time(t)), x_t, t)
"""

from diffusion.processes.base import Process
from diffusion.processes.discrete import DiscreteProcess
from diffusion.processes.edm import EDMProcess
from diffusion.processes.sde import (
    CosineVPProcess,
    SubVPProcess,
    VEProcess,
    VPProcess,
    sigma_max_from_data,
)
from diffusion.processes.straight import CorruptProcess, FlowProcess

PROCESSES: dict[str, type[Process]] = {
    "vp": VPProcess, "vp_cosine": CosineVPProcess, "subvp": SubVPProcess, "ve": VEProcess,
    "edm": EDMProcess, "flow": FlowProcess, "corrupt": CorruptProcess,
    "discrete": DiscreteProcess}

__all__ = ["PROCESSES", "CorruptProcess", "CosineVPProcess", "DiscreteProcess", "EDMProcess",
           "FlowProcess", "Process", "SubVPProcess", "VEProcess", "VPProcess",
           "sigma_max_from_data"]
