# Image of the Tramontane control plane: the operator (`tramontane operator run`, as the Helm
# chart starts it) and the router. Model workers run in Ray images with the `worker` extra.
#   docker build -t ghcr.io/tramontane/tramontane:0.1.0 .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli/ cli/
COPY core/ core/
COPY operator/ operator/
COPY router/ router/
COPY workers/ workers/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /tmp/wheels
RUN pip install "$(ls /tmp/wheels/tramontane-*.whl)[operator,router]" && rm -rf /tmp/wheels
# Same uid/gid as the chart's podSecurityContext; no home, no shell.
RUN groupadd --gid 10001 tramontane \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tramontane
USER 10001:10001
# 9090: Prometheus metrics; 8080: /healthz.
EXPOSE 9090 8080
ENTRYPOINT ["tramontane"]
CMD ["operator", "run", "--all-namespaces"]
