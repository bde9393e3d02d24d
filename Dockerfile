# Worker, API and producer image. Celery runs as PID 1 so SIGTERM from Kubernetes
# reaches it and triggers a warm shutdown (running tasks finish). The HTTP API runs
# from the same image: `imagegen serve --host 0.0.0.0 --port 8000` (uvicorn as PID 1).
# Only what runs in production: no devtools/ (embedded servers, emulators, the demo), no tests.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY contract ./contract
COPY worker ./worker
COPY producer ./producer
COPY api ./api
# /data/images: where compose's volume mounts local storage; owned by the user, so a fresh named
# volume (Docker copies the owner from the image) is writable without root.
RUN pip install -c constraints.txt . && rm -rf build ./*.egg-info \
    && useradd --system --uid 10001 imagegen \
    && mkdir -p /data/images && chown 10001 /data/images
USER 10001

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
