# syntax=docker/dockerfile:1
# emsedge gateway image: docker build -t emsedge .
# Run: docker run -v ./config:/etc/emsedge:ro -v emsedge-buffer:/var/lib/emsedge -p 127.0.0.1:9108:9108 emsedge

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the emsedge wheel (profiles and example configs inside), installed into a throwaway venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY src ./src
COPY adapters ./adapters
COPY config ./config
RUN python -m venv /opt/emsedge \
 && /opt/emsedge/bin/pip wheel --no-deps -w /dist . \
 && /opt/emsedge/bin/pip install --no-compile /dist/emsedge-*.whl

# ---- runtime: the venv only, non-root ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="emsedge" \
      org.opencontainers.image.description="Edge gateway for SMT/EMS lines: equipment to MQTT through a durable buffer" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/emsedge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EMSEDGE_PROFILES=/etc/emsedge/adapters
RUN groupadd --system --gid 10001 emsedge \
 && useradd --system --uid 10001 --gid emsedge --home-dir /var/lib/emsedge --shell /usr/sbin/nologin emsedge \
 && install -d -o emsedge -g emsedge -m 0750 /var/lib/emsedge \
 && install -d -m 0755 /etc/emsedge
COPY --from=build /opt/emsedge /opt/emsedge
USER 10001:10001
WORKDIR /var/lib/emsedge
# config (mount read-only) and the durable buffer (a named volume survives container replacement)
VOLUME ["/etc/emsedge", "/var/lib/emsedge"]
EXPOSE 9108
# The image's config must set `http: {listen: "0.0.0.0:9108"}` for the port mapping, with `http.auth` (or
# `allow_insecure: true` when the port is published on the host's loopback only); /healthz asked from
# inside the container needs no auth, so the check works either way. slim has no curl: use Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; port=os.environ.get('EMSEDGE_HEALTH_PORT','9108'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["emsedge"]
CMD ["run", "-c", "/etc/emsedge/emsedge.yaml"]
