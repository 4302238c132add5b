"""What users run on top of training and evaluation: a whole run (`experiment`), its startup check
(`consistency`), restoring a finished run (`inference`), predictions and Grad-CAM on video files,
ensembles of finished runs."""
