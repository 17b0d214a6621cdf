# tenantgate's container image: docker build -t tenantgate:0.1.0 .   (deploy/README.md, deploy/kubernetes.yaml)
#
# The first stage builds the wheel from this source tree with the command `make test` builds the wheel it
# tests with; the image installs that wheel (never the source tree) and its dependencies, and runs the
# `tenantgate` command as an unprivileged user. The build context is only what the wheel is made of
# (.dockerignore): no local registry, master key or certificates can end up in an image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A numeric user, so that Kubernetes' runAsNonRoot can verify it is not root.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tenantgate --create-home \
        --shell /usr/sbin/nologin tenantgate
COPY --from=wheel /wheels/ /tmp/wheels/
RUN python -m pip install --no-cache-dir /tmp/wheels/tenantgate-*.whl && rm -rf /tmp/wheels
USER 10001:10001
# The default registry, last-known-good file and certificates are relative to it (.tenantgate/).
WORKDIR /var/lib/tenantgate
# decision API, Admin API, plaintext health for probes, Prometheus metrics
EXPOSE 50051 50052 50053 9464
ENTRYPOINT ["tenantgate"]
CMD ["serve"]
