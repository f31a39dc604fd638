"""Workflows on top of segment(): scene composition, flood mapping, survey batches."""

from geoseg.workflows.flood import FloodResult, flood
from geoseg.workflows.scene import SceneResult, scene

__all__ = ["FloodResult", "SceneResult", "flood", "scene"]
