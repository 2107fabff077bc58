"""Annotation projects: active learning on your own unlabelled images (human in the loop).

``create.py`` makes a project, ``project.py`` trains, queries and imports through the same
learners as a simulation, ``images.py`` cuts the project's images into the patches and
candidate windows of a round, ``queries.py`` writes and reads the files the annotator sees,
``regions.py`` maps the model's windows to image regions, ``predict.py`` segments whole
images, ``cli.py`` is the command line.
"""

from activeseg.annotation.create import init_project
from activeseg.annotation.project import Project, Status
from activeseg.annotation.state import Annotation, Query, Region, Round, State

__all__ = ["Annotation", "Project", "Query", "Region", "Round", "State", "Status", "init_project"]
