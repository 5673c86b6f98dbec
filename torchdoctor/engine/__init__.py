"""The engine: resolve a TARGET, prepare one CheckContext, run each check isolated.

``target`` parses and imports targets and finds candidate models, ``context`` holds what a
check may read, ``setup`` builds the training setup copies are trained with, ``runner``
runs the checks into a Report, ``state`` saves and restores global torch state around them.
"""
