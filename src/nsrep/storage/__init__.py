"""What a run leaves on disk: run and deploy folders, checkpoints, the model record and the data record.

Every tool (training, evaluation, deployment, analysis) reads and writes these files through this package,
so each file's layout, version and atomic write are written once.
"""
