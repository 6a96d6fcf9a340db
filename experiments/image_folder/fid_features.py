"""What the image folder's autoencoder features tell apart: FID of damaged copies of a folder's
training images against its held-out images, beside the floor (real training images).

    python experiments/image_folder/fid_features.py <empty folder>

writes 300 generated shapes (``write_shape_folder``, unlabelled) into the folder, trains the
autoencoder (the ``image_folder`` recipe) and prints one FID per kind of images.
"""

import sys

import torch
import torchvision.transforms.v2.functional as TF

from diffusion.data.synthetic import write_shape_folder
from diffusion.metrics import DataRef, FidScorer, load_feature_network

root = write_shape_folder(sys.argv[1], n=300, labelled=False)
options = dict(val_fraction=0.2, split_seed=0, val_root=None, color_channels=3)
features = load_feature_network("image_folder", root=root, image_size=32, center_crop=True,
                                options=options, progress=False)
print(features.feature_id, features.description)
ref = DataRef("image_folder", str(root), 32, True, options)
scorer = FidScorer(features, ref, kid_subset_size=50)
train = ref.images("train")
generator = torch.Generator().manual_seed(0)
damaged = {
    "7x7 Gaussian blur (sigma 2)": TF.gaussian_blur(train, [7, 7], [2.0, 2.0]),
    "greyscale copies": train.float().mean(1, keepdim=True).expand(-1, 3, -1, -1).round()
    .to(torch.uint8),
    "pixels shuffled": train.flatten(2)[:, :, torch.randperm(32 * 32, generator=generator)]
    .view_as(train),
    "uniform noise": (torch.rand(train.shape, generator=generator) * 255).to(torch.uint8),
}
print(f"floor (real training images): {scorer.floor(len(train))[0]:.1f}, n={len(train)}, "
      f"reference: {scorer.reference_n} held-out images")
for name, images in damaged.items():
    print(f"{name}: {scorer.score(images).fid:.1f}")
