"""CIFAR-100 (Krizhevsky, 2009), fine labels: torchvision's python pickles, or class folders."""

from kdrun.data.formats import cifar_loader

load = cifar_loader("CIFAR-100", "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                    "fine_label_names", "CIFAR100")
