# The detector flow and adctl. Build: docker build -t anomaly-detector .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY flows flows
COPY connectors connectors
COPY state state
COPY control control
COPY schemas schemas
COPY detectors detectors
COPY docker/entrypoint.sh /usr/local/bin/ad-entrypoint
# A C compiler only while installing: the per-record modules are compiled (setup.py).
# The sources are removed afterwards, so the flow imports the installed (compiled)
# package, not a copy in the working directory.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install --no-cache-dir '.[all]' \
 && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && cd / && rm -rf /src \
 && python -c "import flows; assert set(flows.IMPLEMENTATION.values()) == {'compiled'}" \
 && chmod +x /usr/local/bin/ad-entrypoint
WORKDIR /app
ENV AD_METRICS_ADDR=0.0.0.0 AD_METRICS_PORT=9464
ENTRYPOINT ["ad-entrypoint"]
