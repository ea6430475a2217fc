# A compute manager for any QCFractal server, with NWChem, GFN2-xTB and MPICH. Build from the repository root:
#   docker build -f docker/compute.Dockerfile -t qcmb-fractal-compute .
# The entrypoint writes the manager's configuration from the environment and starts the manager.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/qcmb
COPY pyproject.toml README.md /src/
COPY qcmb_fractal /src/qcmb_fractal
# [mpi] brings mpi4py and MPICH (mpiexec lands next to python); [compute] the manager; [xtb] GFN2-xTB.
# A build behind a TLS-inspecting proxy passes its CA bundle: --secret id=ca_bundle,src=/path/ca.pem
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    /opt/qcmb/bin/pip install --disable-pip-version-check '/src[compute,xtb,mpi]'

FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 nwchem ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/qcmb qcmb
COPY --from=build /opt/qcmb /opt/qcmb
COPY docker/compute-entrypoint.py /usr/local/bin/qcmb-compute-entrypoint
# NWChem's Open MPI start-up: shared memory and TCP only, no probing for fabrics a container lacks.
ENV PATH=/opt/qcmb/bin:$PATH PYTHONUNBUFFERED=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
USER qcmb
WORKDIR /var/lib/qcmb
ENTRYPOINT ["qcmb-compute-entrypoint"]
