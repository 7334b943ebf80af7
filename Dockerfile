# flowtel collector image: the chart (helm/flowtel) runs it with the same command as CMD below.
#   docker build -t flowtel:0.1.0 .
#   docker run -p 4317:4317 -p 4318:4318 -p 9464:9464 -p 13133:13133 -p 8080:8080 flowtel:0.1.0

# Build the wheel in a throw-away stage, so the image holds no source tree and no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY processors ./processors
COPY exporters ./exporters
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# FLOWTEL_LISTEN_HOST: the config's endpoints are ${env:FLOWTEL_LISTEN_HOST:-localhost}:PORT, and a
# container must listen beyond its own loopback.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLOWTEL_LISTEN_HOST=0.0.0.0
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 flowtel \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin flowtel
# The embedded default, so `docker run` works alone; the chart mounts its ConfigMap over /etc/flowtel.
COPY collector-config/default.yaml /etc/flowtel/config.yaml
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# OTLP/gRPC, OTLP/HTTP, Prometheus /metrics, health and readiness, feedback.
EXPOSE 4317 4318 9464 13133 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:13133/', timeout=2)"]
ENTRYPOINT ["flowtel"]
CMD ["collector", "--config", "/etc/flowtel/config.yaml"]
