"""Model files shipped with ferjax (see README.md here for provenance and licences)."""
