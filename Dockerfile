# The detector flow and adctl. Build: docker build -t anomaly-detector .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flows flows
COPY connectors connectors
COPY state state
COPY control control
COPY schemas schemas
COPY detectors detectors
COPY benchmarks benchmarks
COPY docker/entrypoint.sh /usr/local/bin/ad-entrypoint
RUN pip install --no-cache-dir '.[all]' && chmod +x /usr/local/bin/ad-entrypoint
ENV AD_METRICS_ADDR=0.0.0.0 AD_METRICS_PORT=9464
ENTRYPOINT ["ad-entrypoint"]
