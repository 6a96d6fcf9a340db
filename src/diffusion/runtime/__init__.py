"""Where the code runs: the device and precision (``device``), the process group under
torchrun (``distributed``) and the seeds (``seed``)."""
