"""Training: the session the API and the command line share, the loop, its schedule and checkpoints.

(The folder is `training`, not `train`: `charrnn.train` is the API's function.)
"""
