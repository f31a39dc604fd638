"""The web page: upload an image, segment it, switch and compare models, download GIS outputs."""

from geoseg.web.app import create_app

__all__ = ["create_app"]
