"""gunicorn configuration: ``gunicorn -c gunicorn.conf.py`` (values and hooks live in mpack.http.serving)."""
from mpack.http.serving import config_values

globals().update(config_values())
