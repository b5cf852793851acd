"""HTTP: Falcon resources, body media, the error mapping, logging and gunicorn serving."""
