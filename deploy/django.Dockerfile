# syntax=docker/dockerfile:1
# The reference Django backend (scripts/django_backend) for deploy/compose.yaml:
# a stand-in for the platform's own Django, which is what production points
# DJANGO_BASE_URL at. Not a production server: runserver with DEBUG on, as
# scripts/dev.sh runs it, so it serves the demo chat page's static files
# without a collectstatic step. Build context: the repository root.
# Python 3.11: the version its requirements.txt pins are for.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_DB_PATH=/data/db.sqlite3
WORKDIR /app
COPY scripts/django_backend/requirements.txt ./
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements.txt
COPY scripts/django_backend/ ./
RUN groupadd --gid 10002 django \
 && useradd --uid 10002 --gid 10002 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin django \
 && mkdir /data \
 && chown 10002:10002 /data
VOLUME ["/data"]
USER 10002:10002
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=2)"]
# As scripts/dev.sh: migrate, seed the demo users and lesson (idempotent; it
# prints their tokens and ws:// URLs to the log), then serve.
CMD ["sh", "-c", "python manage.py migrate --noinput -v0 && python manage.py seed_demo && exec python manage.py runserver --noreload 0.0.0.0:8000"]
