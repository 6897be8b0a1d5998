# The control plane (admin API, operator KV routes) under Waitress.
# Build: docker compose build cp
#
# PYTHON_IMAGE is the base of both stages (the official slim image by
# default); PIP_OPTIONS lets an offline build use only the wheels put in
# docker/wheels/ on the host ("--no-index"), as `make e2e` does. The build
# context is the repository filtered by .dockerignore: sources, no secrets.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: every dependency as a wheel, installed into a venv -------------
FROM ${PYTHON_IMAGE} AS build
ARG PIP_OPTIONS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip wheel ${PIP_OPTIONS} --find-links /src/docker/wheels \
        --wheel-dir /wheels -r /src/requirements.txt /src \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -r /src/requirements.txt \
 && /opt/venv/bin/pip install --no-index --no-deps /wheels/productionlab-*.whl \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && install -D -m 0644 /src/nginx/nginx.conf.template \
        /opt/venv/share/productionlab/nginx.conf.template

# --- runtime: the base image, one non-root user, the venv ------------------
FROM ${PYTHON_IMAGE} AS runtime
# A fixed uid/gid that the compose file and the volumes rely on.
RUN groupadd --system --gid 10001 plab \
 && useradd --system --uid 10001 --gid plab --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin plab \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/productionlab/state \
        /var/lib/productionlab/edge /var/lib/productionlab/htpasswd \
        /var/lib/productionlab/backups \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /root/.cache
COPY --from=build /opt/venv /opt/venv
# A fixed malloc mmap threshold returns argon2id's 19 MiB blocks to the system
# after a burst of verifications (as the local stack does for its planes).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    PLAB_ENV=production \
    PLAB_STATE_DIR=/var/lib/productionlab/state \
    PLAB_NGINX_TEMPLATE=/opt/venv/share/productionlab/nginx.conf.template
USER 10001:10001
WORKDIR /var/lib/productionlab
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "productionlab"]
CMD ["serve", "cp", "--host", "0.0.0.0", "--port", "8000"]
