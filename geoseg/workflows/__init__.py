"""Workflows on top of segment(): scene composition, flood mapping, survey batches."""

from geoseg.workflows.flood import FloodResult, flood
from geoseg.workflows.scene import SceneResult, scene
from geoseg.workflows.survey import SurveyResult, expand_inputs, survey

__all__ = ["FloodResult", "SceneResult", "SurveyResult", "expand_inputs", "flood", "scene", "survey"]
