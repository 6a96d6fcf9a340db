"""The config groups agree with the classes they name, and recipes share what they share."""

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from diffusion.config.paths import CONF_DIR
from diffusion.config.preflight import flatten
from diffusion.data import ImageDataset, dataset_info
from hydra_utils import compose_config


@pytest.mark.parametrize("path", sorted((CONF_DIR / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_config_describes_its_class(path):
    node = OmegaConf.load(path)
    cls = get_class(node._target_)
    assert issubclass(cls, ImageDataset) and dataset_info(node.name) is cls
    raw = OmegaConf.to_container(node)  # unresolved: some describe a folder, not a class
    # a class whose classes come from its files counts them in the config (a resolver)
    assert (node.channels, raw["num_classes"]) == (cls.channels, cls.num_classes) or (
        cls.num_classes is None and raw["num_classes"] == "${folder_classes:${data.root}}")
    # a class of varying sizes leaves the size to the config, which then crops to a square
    assert node.image_size == cls.image_size or (cls.image_size is None and node.center_crop)
    assert (node.train_split, node.val_split) == (cls.train_split, cls.eval_split)


def test_fashion_mnist_recipe_is_the_mnist_recipe():
    mnist, fashion = (flatten(OmegaConf.to_container(compose_config([f"experiment={name}"]),
                                                     resolve=True))
                      for name in ("mnist", "fashion_mnist"))
    changed = {key for key in mnist.keys() | fashion.keys()
               if key not in mnist or key not in fashion or mnist[key] != fashion[key]}
    # logger.wandb.tags is ${tags}
    assert {key for key in changed if not key.startswith("data.")} == {"name", "tags",
                                                                        "logger.wandb.tags"}
    assert {key for key in changed if key.startswith("data.")} == {"data._target_", "data.name"}
    assert fashion["name"] == fashion["data.name"] == fashion["tags"][0] == "fashion_mnist"
    assert fashion["model.attention_resolutions"] == [14] and fashion["trainer.max_steps"] == 30000
