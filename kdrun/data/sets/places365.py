"""Places365 (Zhou et al., TPAMI 2017), an OpenOOD far-OOD set: every image under root, e.g.
the official val_256/ folder or OpenOOD's selection of it."""

from kdrun.data.formats import ImageTreeSettings, image_tree_loader

OOD_ONLY = True
Settings = ImageTreeSettings

load = image_tree_loader("Places365", "unpack val_256.tar from "
                         "http://places2.csail.mit.edu/download.html, or OpenOOD's "
                         "images_classic/places365, there")
