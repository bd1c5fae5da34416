"""End-to-end pipelines (photo collection -> COLMAP model, Aachen localization,
the synthetic demo). The thin scripts in the repository's ``pipelines/`` folder
call these modules."""
