# One image for the three processes: `stripeline web` (default), `stripeline worker`,
# `stripeline migrate`. The migrations ship inside the installed package.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin stripeline

COPY pyproject.toml README.md /src/
COPY app /src/app
COPY handlers /src/handlers
COPY sql /src/sql
RUN python -m venv /opt/stripeline \
    && /opt/stripeline/bin/pip install /src \
    && rm -rf /src

ENV PATH=/opt/stripeline/bin:$PATH \
    PORT=8000
USER stripeline
WORKDIR /home/stripeline
EXPOSE 8000
CMD ["stripeline", "web"]
