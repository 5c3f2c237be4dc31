"""Sonoloop: an echocardiography PACS node that segments every echo and learns from corrections."""

__version__ = "0.1.0"
