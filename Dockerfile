# mpnn_ip for NVIDIA GPUs: PyTorch 2.4.1 + CUDA 12.4 + cuDNN 9 (runtime image, no compiler needed).
#   docker build -t mpnn-ip .
#   docker run --gpus all -v "$PWD":/work mpnn-ip experiment=quickstart trainer=gpu
#   docker run --gpus all -v "$PWD":/work --entrypoint mpnn-eval mpnn-ip ckpt_path=... data.path=...
FROM pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    WANDB_MODE=offline

# torch-cluster compiled for exactly this torch + CUDA, from the PyG wheel index (wheels of
# torch 2.4.0 serve every 2.4.x); installed first so that the package's own install finds it.
RUN pip install torch-cluster -f https://data.pyg.org/whl/torch-2.4.0+cu124.html \
    && python -c "import torch, torch_cluster; print(torch.__version__, torch.version.cuda, torch_cluster.__version__)"

WORKDIR /opt/mpnn_ip
COPY pyproject.toml README.md ./
# The Hydra configs are package data (mpnn_ip/configs), so the installed package carries them.
COPY mpnn_ip ./mpnn_ip
# The base image's torch satisfies torch>=2.1, so pip keeps the CUDA build instead of replacing it.
RUN pip install . && python -c "import mpnn_ip.cli.train, mpnn_ip.cli.evaluate, mpnn_ip.cli.md, torch_geometric, e3nn" \
    && cd / && mpnn-train --cfg job > /dev/null

# Runs, checkpoints and plots land in the mounted working directory.
WORKDIR /work
ENTRYPOINT ["mpnn-train"]
CMD ["--help"]
