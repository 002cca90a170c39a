"""Describable Textures (DTD; Cimpoi et al., CVPR 2014), an OpenOOD far-OOD set: every image
under root, e.g. the official dtd/images/<class>/ tree or OpenOOD's copy."""

from kdrun.data.formats import ImageTreeSettings, image_tree_loader

OOD_ONLY = True
Settings = ImageTreeSettings

load = image_tree_loader("Textures", "unpack dtd-r1.0.1.tar.gz from "
                         "https://www.robots.ox.ac.uk/~vgg/data/dtd/ and give its images/ folder")
