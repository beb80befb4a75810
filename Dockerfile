# One image for the three processes: `stripeline web` (the default command), `stripeline worker`
# and `stripeline migrate` (the release step). Dependencies come from requirements.txt, the same
# lock that Heroku's and Render's Python builds install from. Fly builds this image too.
FROM python:3.11.16-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/stripeline/bin:$PATH

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin stripeline

WORKDIR /app
# The locked dependencies in a layer of their own, rebuilt only when the lock changes.
COPY requirements.txt ./
RUN python -m venv /opt/stripeline \
    && sed '/^\.$/d' requirements.txt > /tmp/dependencies.txt \
    && pip install --no-deps --requirement /tmp/dependencies.txt \
    && rm /tmp/dependencies.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY handlers ./handlers
COPY sql ./sql
# The project itself. --no-deps, then pip check: the lock alone must satisfy every requirement.
RUN pip install --no-deps . \
    && pip check \
    && rm -rf build ./*.egg-info

ENV PORT=8000
USER stripeline
WORKDIR /home/stripeline
EXPOSE 8000
# The web answers /healthz on $PORT; a container running another command counts as healthy
# while it runs (see `stripeline healthcheck`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["stripeline", "healthcheck"]
CMD ["stripeline", "web"]
