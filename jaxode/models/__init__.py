"""Whole networks assembled from fields and layers, one file per paper family.

Classifiers (`jaxode.models.classifiers`): Carrara et al.'s Residual Net, Res-ODE Net
and ODE-only Net; Chen et al.'s MNIST ODE-Net and its six-block ResNet.  Deep
continuous networks in `jaxode.models.dcn`, NODE-EW in `jaxode.models.node_ew`,
SegNode in `jaxode.models.segnode`.  `jaxode.models.describe.layer_table(model)`
lists the layers of any of them in order (docs/models.md).
"""

from jaxode.models.classifiers import (
    MODELS,
    Head,
    ODENetClassifier,
    PreActBlock,
    ResNetClassifier,
    Sequence,
    build_classifier,
    carrara_odeonly,
    carrara_resnet,
    carrara_resode,
    chen_odenet,
    chen_resnet,
    make_model,
    odeonly_net,
)

__all__ = [
    "MODELS",
    "make_model",
    "build_classifier",
    "Head",
    "PreActBlock",
    "Sequence",
    "ODENetClassifier",
    "ResNetClassifier",
    "carrara_resnet",
    "carrara_resode",
    "carrara_odeonly",
    "odeonly_net",
    "chen_odenet",
    "chen_resnet",
]
