# syntax=docker/dockerfile:1
# The aif image: one image for the four roles (`aif frontend`, `aif model-job-executor`,
# `aif chat-job-executor`, `aif task-executor-manager`) and for `aif serve`.
#
# The model-job-executor drives the Pulumi CLI through the Automation API (`pip install pulumi`
# ships the SDK only), so the CLI and the kubernetes provider plugin are installed here, at
# build time: a pod never downloads anything. Build for the nodes' architecture, e.g.
#   docker buildx build --platform linux/arm64,linux/amd64 -t <registry>/aif:0.1.0 --push .
FROM python:3.11-slim

# The CLI version, pinned; the SDK is pinned to the same release below.
ARG PULUMI_VERSION=3.272.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PULUMI_HOME=/opt/pulumi-home \
    PULUMI_SKIP_UPDATE_CHECK=true \
    PATH=/opt/pulumi/bin:$PATH

# The official install script, with the pinned version, into /opt/pulumi/bin.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL https://get.pulumi.com/install.sh -o /tmp/install-pulumi.sh \
 && sh /tmp/install-pulumi.sh --version "${PULUMI_VERSION}" --install-root /opt/pulumi --no-edit-path \
 && rm /tmp/install-pulumi.sh \
 && apt-get purge -y --auto-remove curl \
 && rm -rf /var/lib/apt/lists/* \
 && pulumi version

WORKDIR /app
COPY pyproject.toml README.md* ./
COPY domain ./domain
COPY api ./api
COPY scaler ./scaler
COPY infra ./infra
COPY simulator ./simulator
RUN pip install "pulumi==${PULUMI_VERSION}" . \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/aif aif \
 && mkdir -p "${PULUMI_HOME}" /var/lib/aif \
 && chown -R aif:aif "${PULUMI_HOME}" /var/lib/aif

# The uid the install program's pods run as (infra/install/roles.py: AIF_UID).
USER 10001

# Exactly the provider version the installed pulumi-kubernetes SDK asks for, into PULUMI_HOME.
RUN pulumi plugin install resource kubernetes \
      "v$(python -c 'from importlib.metadata import version; print(version("pulumi_kubernetes"))')" \
 && pulumi plugin ls

ENV AIF_DATA_DIR=/var/lib/aif \
    AIF_HOST=0.0.0.0 \
    AIF_PORT=8080
EXPOSE 8080
ENTRYPOINT ["aif"]
CMD ["serve"]
