# GPU image: the NGC PyTorch container (CUDA torch, Transformer Engine, apex, NCCL) with
# megatron-core pinned to the release cluster users run and this package installed editable.
#
#   docker build -t megatron-masklm .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 --rm \
#       -v "$PWD/runs:/workspace/megatron_masklm/runs" megatron-masklm \
#       bash tools/gpu_check.sh runs/gpu_check
#
# Packages that declare a torch requirement are installed with --no-deps: NGC's torch is a
# pre-release build (2.x.0a0+git...), which pip would otherwise replace with a PyPI wheel.
# The base is the container Megatron-LM's own CI runs its LTS lane on (docker/.ngc_version.lts:
# 25.09). Another: --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:<yy.mm>-py3 (Python 3.12 ones,
# 25.01 or newer: megatron-core 0.17+ needs Python 3.12).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
FROM ${BASE_IMAGE}

ARG MEGATRON_CORE_VERSION=0.19.2
ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /workspace/megatron_masklm

# Dependencies in their own layer, so editing the source does not reinstall them. Versions are
# left unpinned on purpose: NGC images (25.03 on) pin every package they ship in
# /etc/pip/constraint.txt, so pip keeps those and only adds what is missing. megatron-core and
# accelerate (which declare torch) go in without their dependencies and past that file, which
# may pin a megatron-core of the image's own.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir numpy packaging psutil pyyaml safetensors sentencepiece \
        tokenizers tqdm transformers gguf matplotlib pytest pytest-timeout \
 && PIP_CONSTRAINT='' pip install --no-cache-dir --no-deps \
        "megatron-core==${MEGATRON_CORE_VERSION}" accelerate

COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
 && python -c "import importlib.metadata as md, megatron_masklm; print('megatron-core', md.version('megatron-core'), 'megatron_masklm', megatron_masklm.__version__)"

CMD ["bash"]
