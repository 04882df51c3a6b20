# One image for `infero server`, `infero llm` and `infero mcp` (docs/deploy.md#container-image).
#   docker build -t infero --build-arg INFERO_BUILD_SHA=$(git rev-parse --short=12 HEAD) .
#   docker run -p 8080:8080 -e API_KEY=... -e CLIENT_KEY=... infero            # server
#   docker run -e SERVER_URL=wss://gw.example.com/api/llm/connect ... infero llm
#   docker run -e SERVER_URL=wss://gw.example.com/api/mcp/connect ... infero mcp

# ---- build: the wheel, installed with its dependencies into a virtualenv ----------------
FROM python:3.12.8-slim-bookworm AS build
# Embedded in the wheel by hatch_build.py (the build context has no .git); the build date is
# the day of the build unless INFERO_BUILD_DATE says otherwise.
ARG INFERO_BUILD_SHA=unknown
ARG INFERO_BUILD_DATE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INFERO_BUILD_SHA=$INFERO_BUILD_SHA \
    INFERO_BUILD_DATE=$INFERO_BUILD_DATE
WORKDIR /src
COPY pyproject.toml README.md hatch_build.py ./
COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/infero \
 && /opt/infero/bin/pip install "$(ls /wheels/infero-*.whl)[mcp]"

# ---- runtime: Python, the virtualenv, a non-root user -----------------------------------
FROM python:3.12.8-slim-bookworm
ENV PATH=/opt/infero/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    XDG_CONFIG_HOME=/var/lib/infero/config
RUN groupadd --system --gid 10001 infero \
 && useradd --system --uid 10001 --gid infero --home-dir /var/lib/infero --create-home \
    --shell /usr/sbin/nologin infero
COPY --from=build /opt/infero /opt/infero
USER 10001:10001
WORKDIR /var/lib/infero
EXPOSE 8080
# The server answers /healthz on PORT; a connector answers /status on STATUS_ADDR if set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "infero.common.healthcheck"]
# Exec form: infero is PID 1 and gets SIGTERM itself, so `docker stop` drains (give it
# time: `docker stop -t 330`, compose `stop_grace_period`).
ENTRYPOINT ["infero"]
CMD ["server"]
