"""Shim so that pip can install this setup.cfg project (all metadata lives in setup.cfg)."""
from setuptools import setup

setup()
