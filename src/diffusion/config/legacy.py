"""Keys and targets of earlier versions, in one table each, with the one sentence that says
where a key went.

Run folders written by earlier versions still resume, sample and evaluate: their config is
read with these tables (``trainer.sampler`` as the ``sampler`` group's ``name``,
``trainer.loss`` as the objective's, ``diffusion.objectives.Objective`` at its new place).
Typed in its old place on a new command line, an old key is refused with where it went.
"""

from __future__ import annotations

from diffusion.sampling.sampler import OLD_TRAINER_SAMPLER_KEYS as OLD_TRAINER_SAMPLER_KEYS

MOVED_KEYS = {"steps": "sampler.steps", "eta": "sampler.eta",
              "timestep_spacing": "sampler.timestep_spacing",
              "trainer.sampler": "sampler=<name>", "trainer.sample_steps": "sampler.steps",
              "trainer.sample_spacing": "sampler.timestep_spacing",
              "trainer.loss": "objective.loss", "trainer.huber_delta": "objective.huber_delta"}
"""Keys of earlier versions and where the ``sampler`` and ``objective`` config groups keep
them now."""

# OLD_TRAINER_SAMPLER_KEYS (``trainer.*`` sampling keys of run folders from before the
# ``sampler`` group, and theirs) lives with ``SamplerSpec.of_run``, which reads run folders
# without this config layer.

OLD_TRAINER_OBJECTIVE_KEYS = ("loss", "huber_delta")
"""``trainer.*`` keys of run folders from before the ``objective`` group."""

MOVED_TARGETS = {"diffusion.objectives.Objective": "diffusion.training.objectives.Objective"}
"""``_target_`` values of earlier versions' run folders and where those classes live now."""


def moved_key_message(key: str) -> str:
    """The one sentence for a key of ``MOVED_KEYS`` typed in its old place."""
    if MOVED_KEYS[key].startswith("objective."):
        return (f"{key} is now {MOVED_KEYS[key]}: the training objective is a config group, "
                f"e.g. objective=v_minsnr objective.loss=l1 (conf/objective/ holds one file "
                f"per objective).")
    return (f"{key} is now {MOVED_KEYS[key]}: the sampler is a config group, e.g. "
            f"sampler=ddim sampler.steps=50 (conf/sampler/ holds one file per sampler).")


def current_target(target: str) -> str:
    """Where the ``_target_`` of an earlier version's run folder lives now."""
    return MOVED_TARGETS.get(target, target)
