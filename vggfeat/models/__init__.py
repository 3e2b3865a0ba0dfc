"""VGG backbones: architectures as data, dense evaluation, weight files."""
from vggfeat.models.preprocessing import CAFFE_VGG, TORCHVISION_IMAGENET, normalize
from vggfeat.models.vgg import ARCHS, DENSE_LAYERS, PAPER_NAMES, VGG, build_backbone, canonical_arch
from vggfeat.models.weights import WeightsError, export_torchvision, load_backbone, save_backbone

__all__ = ["ARCHS", "CAFFE_VGG", "DENSE_LAYERS", "PAPER_NAMES", "TORCHVISION_IMAGENET", "VGG",
           "WeightsError", "build_backbone", "canonical_arch", "export_torchvision",
           "load_backbone", "normalize", "save_backbone"]
