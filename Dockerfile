# One image for every service; the command picks which one runs:
#   python -m services.api | services.scheduler | services.dispatcher
#   python -m services.reporter | services.sandbox
#   alembic upgrade head        (the migrations, once, before the services start)
# Ports (the *_PORT settings): api 8000, scheduler 8001, dispatcher 8002, reporter 8003,
# sandbox 8090 (sends) and 8091 (control). deploy/docker-compose.yml runs the whole stack.
# The exact Python and Debian release, as CI's image (.gitlab-ci.yml): a rebuild gets the
# same interpreter, and a new one comes in by a change of this line.
FROM python:3.11.16-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged account runs the services; the log directory is theirs.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && install -d -o app -g app /var/log/notifications

WORKDIR /app

# Dependencies first, from the runtime lock alone (`make lock`: every package at an exact
# version, checked against its hashes; setuptools to build the project below): this layer
# is rebuilt when the lock changes, not on every change of the code.
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --require-hashes -r /tmp/runtime.lock \
    && rm /tmp/runtime.lock

# Then the code, and the project itself (`pip install .`; nothing left to download).
# alembic.ini stays in /app: `alembic upgrade head` runs from here. tools.web_assets
# unpacks the AsyncAPI renderer of the /asyncapi pages into shared/static/asyncapi/
# (the npm package's tarball, checked against its pinned sha512) before the install.
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY services ./services
COPY tools ./tools
RUN NOTIFICATIONS_CACHE=/tmp/assets-cache python -m tools.web_assets \
    && rm -rf /tmp/assets-cache \
    && pip install --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info

# Listen on every interface of the container; JSON logs to stdout and to a file that a
# volume can collect (`statistic.log`, one line per event, from every service).
ENV HTTP_HOST=0.0.0.0 \
    SANDBOX_HOST=0.0.0.0 \
    LOG_FORMAT=json \
    LOG_FILE=/var/log/notifications/statistic.log

USER app
EXPOSE 8000 8001 8002 8003 8090 8091
CMD ["python", "-m", "services.api"]
