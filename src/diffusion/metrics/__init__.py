"""FID and KID with a stated protocol, over domain feature networks the framework trains.

>>> from diffusion.metrics import DataRef, FidScorer, load_feature_network
>>> features = load_feature_network("mnist")            # trained once, then cached
>>> scorer = FidScorer(features, DataRef("mnist"))       # reference: the test split
>>> print(scorer.score(images))                          # images in [-1, 1]
FID 4.1 (floor 0.8, n=10000, images, mnist-lenet@1a2b3c4d)
"""

from diffusion.metrics.features import (
    FeatureExtractor,
    FeatureNetworkError,
    FeatureSpec,
    cache_root,
    load_feature_network,
    to_uint8,
)
from diffusion.metrics.fid import DataRef, FidEvaluator, FidResult, FidScorer, format_score
from diffusion.metrics.inception import InceptionFeatures, check_inception_weights

__all__ = [
    "DataRef",
    "FeatureExtractor",
    "FeatureNetworkError",
    "FeatureSpec",
    "FidEvaluator",
    "FidResult",
    "FidScorer",
    "InceptionFeatures",
    "cache_root",
    "check_inception_weights",
    "format_score",
    "load_feature_network",
    "to_uint8",
]
