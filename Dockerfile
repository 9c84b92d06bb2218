# ddp_edf in a container: Python + NumPy + mpi4py on the mpich wheel, run as a non-root user.
#
#   docker build -t ddp_edf .
#   docker run --rm -v /path/to/datasets:/data:ro -v "$PWD/runs:/work/runs" ddp_edf
#   docker run --rm -e NPROC=4 -e TRAIN_ARGS="--config configs/fashion_mlp.toml" \
#       -v /usr/share/datasets:/data:ro -v "$PWD/runs:/work/runs" ddp_edf
#
# Data: /data/<dataset>/ (e.g. /data/mnist/train-images-idx3-ubyte.gz, /data/fashion-mnist/...), found
#   through DDP_EDF_DATA; a dataset missing there is downloaded into the user's cache in the container.
# Runs: /work/runs/<date>-<config>/ (mount it to keep them); resume one with
#   TRAIN_ARGS="--out runs/NAME --resume auto".
# Ranks and threads: NPROC ranks (default 2); each rank gets cores / NPROC BLAS threads from the trainer
#   unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS are passed with -e.
# docker stop sends SIGTERM to mpirun (PID 1, via exec), which forwards it to the ranks: they finish the
#   step, write a checkpoint and exit with 75.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DDP_EDF_DATA=/data

RUN useradd --create-home --uid 1000 ddp && python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY ddp_edf /src/ddp_edf
RUN pip install --no-cache-dir "/src[mpi]"
COPY configs /work/configs
RUN mkdir -p /work/runs /data && chown ddp:ddp /work/runs

USER ddp
WORKDIR /work
VOLUME ["/work/runs"]
CMD exec mpirun -n ${NPROC:-2} python -m ddp_edf.train ${TRAIN_ARGS:-}
