# Exposr Trainer: CPU image. Build: docker build -t exposr-trainer .
#   GPU (CUDA) torch instead: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 ...
#   (or TORCH_INDEX_URL= for the default index), then run with TRAIN_DEVICE=cuda.
# Run:   docker run --env-file .env -p 8001:8001 -v exposr-data:/app/datasets \
#          -v exposr-models:/app/models -v exposr-logs:/app/logs exposr-trainer
FROM python:3.11-slim

# Where torch and torchvision come from (the versions are the pins of constraints.txt).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies in their own layers, before the code: a code change rebuilds only the last layers.
COPY pyproject.toml constraints.txt ./
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        "torch==$(sed -n 's/^torch==//p' constraints.txt)" \
        "torchvision==$(sed -n 's/^torchvision==//p' constraints.txt)"
# The project's dependencies as pyproject.toml lists them, pinned by constraints.txt (torch is there).
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && grep -v -E '^(torch|torchvision)==' constraints.txt > /tmp/constraints-no-torch.txt \
    && pip install -c /tmp/constraints-no-torch.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/constraints-no-torch.txt

# The code, installed without touching the dependencies above.
COPY README.md ./
COPY app ./app
COPY config ./config
COPY dataset ./dataset
COPY labeler ./labeler
COPY scraper ./scraper
COPY trainer ./trainer
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 exposr \
    && mkdir -p /app/datasets /app/models /app/logs \
    && chown -R exposr:exposr /app/datasets /app/models /app/logs
USER exposr

VOLUME ["/app/datasets", "/app/models", "/app/logs"]
EXPOSE 8001

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=4).status == 200 else 1)"

# 0.0.0.0 inside the container; publish the port to choose who can reach it.
# SIGTERM (docker stop) shuts down gracefully: running jobs are marked interrupted.
STOPSIGNAL SIGTERM
CMD ["exposr-trainer", "serve", "--host", "0.0.0.0", "--port", "8001"]
