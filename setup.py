"""megakd: knowledge distillation of LLMs during pre-training, on megatron-core.

torch is a requirement but install it first on CPU machines (`pip install torch==2.13.0`): an
unpinned torch pulls a multi-GB CUDA build. Transformer Engine and NVIDIA apex come from the GPU
container (see Dockerfile); they are not PyPI requirements (PyPI's `apex` is an unrelated package).
"""

from setuptools import find_packages, setup

setup(
    name="megakd",
    version="0.1.0",
    description="Knowledge distillation of LLMs during pre-training, on megatron-core",
    packages=find_packages(include=["megakd", "megakd.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.13",
        "megatron-core>=0.16,<0.17",
        "transformers>=4.56",
        "tokenizers",
        "datasets",
        "pyarrow",
        "tensorboard",
        "pyyaml",
        "tqdm",
        "psutil",
        "numpy",
        "matplotlib",  # MiniPLM score histograms
        "rouge-score",  # MiniLLM evaluation (Rouge-L)
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "packaging"],
        # NeMo-Run launcher; leptonai>=0.47 dropped an API that nemo_run 0.11 imports.
        "launch": ["nemo_run>=0.11,<0.12", "leptonai<0.47"],
        # gpu: Transformer Engine + apex ship in the NGC PyTorch container (Dockerfile).
    },
)
