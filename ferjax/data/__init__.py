"""Input pipelines: protocols, temporal sampling, augmentation, faces, optical flow."""
