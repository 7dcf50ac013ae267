# imgcls: gRPC image classification on ONNX Runtime.
#
#   docker build -t imgcls:latest .
#   docker run --rm -p 50051:50051 -p 9090:9090 imgcls:latest          # = imgcls serve --host 0.0.0.0
#   docker run --rm imgcls:latest serve --help                          # any `imgcls` subcommand works
#
# Two stages: `builder` installs the project (and, with it, the embedded EfficientNet-Lite0 model, which
# is package data) into a virtual environment at /opt/venv; `runtime` copies that venv onto a clean
# python:3.11-slim (same base image, so the venv's interpreter links stay valid) and runs as a non-root
# user. No compiler or build tool reaches the final image.
#
# GPU variant (one approach, a build argument; the image stays python:3.11-slim):
#
#   docker build --build-arg ORT_PACKAGE=onnxruntime-gpu -t imgcls:gpu .
#   docker run --rm --gpus all -p 50051:50051 imgcls:gpu \
#       serve --host 0.0.0.0 --providers CUDAExecutionProvider,CPUExecutionProvider
#
# With ORT_PACKAGE=onnxruntime-gpu the builder uninstalls the CPU `onnxruntime` wheel that the project's
# dependencies brought in and installs `onnxruntime-gpu[cuda,cudnn]` of the very same version. Its
# extras pull the CUDA runtime libraries and cuDNN as NVIDIA's PyPI wheels (under site-packages/nvidia),
# so no nvidia/cuda base image (and no second Python) is needed; the builder lists the folders holding
# those libraries in /opt/venv/ld.so.conf and the runtime stage registers them with ldconfig, so ONNX
# Runtime's CUDA provider finds them without LD_LIBRARY_PATH. For the CPU build that file is empty. The
# host needs only the NVIDIA driver for that CUDA major (onnxruntime-gpu 1.31 is built for CUDA 13:
# driver 580 or newer) and the NVIDIA Container Toolkit (`--gpus`; on Kubernetes the device plugin).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# onnxruntime (CPU, default) or onnxruntime-gpu (CUDA; see above).
ARG ORT_PACKAGE=onnxruntime

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the checkout out of the context).
COPY pyproject.toml README.md ./
COPY client/ client/
COPY server/ server/

# `pip install .` builds the wheel with hatchling and installs it with its dependencies; the model under
# server/imgcls/server/models/ is package data and lands in site-packages with it.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && case "${ORT_PACKAGE}" in \
         onnxruntime) ;; \
         onnxruntime-gpu) \
           ort_version="$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')" \
           && /opt/venv/bin/pip uninstall --yes onnxruntime \
           && /opt/venv/bin/pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==${ort_version}" ;; \
         *) echo "ORT_PACKAGE must be onnxruntime or onnxruntime-gpu, not '${ORT_PACKAGE}'" >&2; exit 1 ;; \
       esac \
    && /opt/venv/bin/python -c "import pathlib, sysconfig; \
root = pathlib.Path(sysconfig.get_paths()['purelib'], 'nvidia'); \
print(*sorted({str(p.parent) for p in root.glob('**/lib*.so*')}), sep='\n')" > /opt/venv/ld.so.conf \
    && /opt/venv/bin/imgcls --help > /dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="imgcls" \
      org.opencontainers.image.description="gRPC image classification server on ONNX Runtime" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /opt/venv /opt/venv

# A fixed numeric UID/GID (10001): Kubernetes' runAsNonRoot can only verify a numeric USER, and
# deploy/deployment.yaml runs as the same IDs. The HF cache folder is created owned by that user so
# the VOLUME below is initialised writable for it.
RUN groupadd --system --gid 10001 imgcls \
    && useradd --system --uid 10001 --gid imgcls --create-home --home-dir /home/imgcls \
         --shell /usr/sbin/nologin imgcls \
    && mkdir -p /var/cache/huggingface \
    && chown imgcls:imgcls /var/cache/huggingface \
    && ln -s /opt/venv/ld.so.conf /etc/ld.so.conf.d/zz-imgcls-nvidia.conf \
    && ldconfig

# IMGCLS_METRICS_PORT turns the Prometheus endpoint on (the server's own default is no metrics server).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/var/cache/huggingface \
    IMGCLS_METRICS_PORT=9090

# Models downloaded from the Hugging Face Hub (--model NAME=owner/repo) are cached here.
VOLUME ["/var/cache/huggingface"]

USER 10001:10001
WORKDIR /home/imgcls

# 50051: gRPC (classifier, grpc.health.v1, reflection); 9090: Prometheus /metrics over HTTP.
EXPOSE 50051 8000 9090

# Exec form: the check runs on its own (not through the ENTRYPOINT). start-period covers model loading
# and a first Hub download.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["imgcls", "health", "--server", "127.0.0.1:50051", "--timeout", "5"]

# The server handles SIGTERM itself (NOT_SERVING, then finishes accepted calls within --grace-period,
# default 10 s): give `docker stop` more than that, e.g. `docker stop -t 30`.
ENTRYPOINT ["imgcls"]
CMD ["serve", "--host", "0.0.0.0"]
