"""Backbones: VGG (architectures as data, dense evaluation, weight files) and torchvision's
other CNN families run densely (`torchvision_nets`)."""
from vggfeat.models.families import FAMILIES
from vggfeat.models.preprocessing import CAFFE_VGG, TORCHVISION_IMAGENET, normalize
from vggfeat.models.torchvision_nets import TorchvisionNet, build_torchvision
from vggfeat.models.vgg import ARCHS, DENSE_LAYERS, PAPER_NAMES, VGG, build_backbone, canonical_arch
from vggfeat.models.weights import WeightsError, export_torchvision, load_backbone, save_backbone

__all__ = ["ARCHS", "CAFFE_VGG", "DENSE_LAYERS", "FAMILIES", "PAPER_NAMES", "TORCHVISION_IMAGENET",
           "VGG", "TorchvisionNet", "WeightsError", "build_backbone", "build_torchvision",
           "canonical_arch", "export_torchvision", "load_backbone", "normalize", "save_backbone"]
