# megakd on an NVIDIA NGC PyTorch image, which already carries CUDA, NCCL, cuDNN, Transformer Engine
# and apex. Build and run: docker/README.md. The image's torch is kept as is: torch is not in the
# pip list below, megakd itself goes in with --no-deps, NGC's PIP_CONSTRAINT pins the image's
# packages, and the build fails if torch changed anyway.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1
WORKDIR /workspace/megakd

# setup.py's install_requires without torch (tests/test_dockerfile.py keeps the two in step).
# Not PyPI "apex": an unrelated package; NVIDIA apex is already in the image.
RUN python -c "import torch; print(torch.__version__)" > /tmp/torch-version \
 && pip install --no-cache-dir \
        "megatron-core>=0.16,<0.17" \
        "transformers>=4.56" \
        tokenizers \
        datasets \
        pyarrow \
        tensorboard \
        pyyaml \
        tqdm \
        psutil \
        numpy \
        matplotlib \
        rouge-score \
 && python -c "import torch; print(torch.__version__)" | cmp - /tmp/torch-version

COPY setup.py ./
COPY megakd ./megakd
COPY examples ./examples
COPY tools ./tools
COPY configs ./configs
# --no-build-isolation: build with the image's setuptools instead of fetching one.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python -c "import megakd, megatron.core; print('megakd', megakd.__version__)"
