"""Tiny ImageNet (200 ImageNet classes at 64x64), an OpenOOD near-OOD set for CIFAR models:
every image under root, e.g. tiny-imagenet-200/val/ or OpenOOD's images_classic/tin (which
leaves out the images of classes CIFAR shares), resized to dataset.image_size."""

from kdrun.data.formats import ImageTreeSettings, image_tree_loader

OOD_ONLY = True
Settings = ImageTreeSettings

load = image_tree_loader("Tiny ImageNet", "unpack tiny-imagenet-200.zip from "
                         "http://cs231n.stanford.edu/tiny-imagenet-200.zip, or OpenOOD's "
                         "images_classic/tin, and give the folder of the images you use")
