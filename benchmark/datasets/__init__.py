"""The datasets beyond CIFAR-10 and a plain ImageFolder tree, one module each; importing the
package registers them in ``benchmark.data.DATASETS``. A module finds its dataset's published
on-disk form under the data root (what torchvision or the dataset's site gives), or an
ImageFolder tree or archive of it, downloads it where it can, and decodes it once into the
cache as uint8 arrays (``benchmark.data.cache_items`` / ``cache_imagefolder``)."""

from benchmark.datasets import cifar100, gtsrb, tiny_imagenet  # noqa: F401
