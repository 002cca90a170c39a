"""CIFAR-10 (Krizhevsky, 2009): torchvision's python pickles, or class folders."""

from kdrun.data.formats import cifar_loader

load = cifar_loader("CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                    ["test_batch"], "labels", "batches.meta", "label_names", "CIFAR10")
