"""Workflows on top of segment(): scene composition, flood mapping, survey batches."""

from geoseg.workflows.scene import SceneResult, scene

__all__ = ["SceneResult", "scene"]
