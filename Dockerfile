# Minimal image; hardened multi-stage build and Kubernetes manifests come with the deploy issue.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY watcher ./watcher
RUN pip install --no-cache-dir .
USER 65532:65532
ENTRYPOINT ["watcher"]
CMD ["simulate", "--host", "0.0.0.0"]
