# The QCFractal server with the qcmb-fractal plugin. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t qcmb-fractal-server .
# The entrypoint writes a configuration from the environment on first start, creates or upgrades the
# database (idempotent), creates the admin and compute users from secrets, then runs
# `qcmb-fractal-server start`. See docs/deploy.md.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libpq-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/qcmb
COPY pyproject.toml README.md /src/
COPY qcmb_fractal /src/qcmb_fractal
# A build behind a TLS-inspecting proxy passes its CA bundle: --secret id=ca_bundle,src=/path/ca.pem
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    /opt/qcmb/bin/pip install --disable-pip-version-check '/src[server]'

FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 libpq5 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/qcmb qcmb
COPY --from=build /opt/qcmb /opt/qcmb
COPY docker/server-entrypoint.py /usr/local/bin/qcmb-server-entrypoint
ENV PATH=/opt/qcmb/bin:$PATH PYTHONUNBUFFERED=1
USER qcmb
WORKDIR /var/lib/qcmb
VOLUME /var/lib/qcmb
EXPOSE 7777
ENTRYPOINT ["qcmb-server-entrypoint"]
