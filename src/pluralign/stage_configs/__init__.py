"""Stage configs kept out of :mod:`pluralign.config`, one module per params section.

``pluralign/stage_configs/<section>.py`` defines ``Config`` (a
:class:`pluralign.config.StageConfig` subclass); :func:`pluralign.config.stage_config_class`
finds it. Only that stage's DVC entry lists the module, so changing its fields reruns that
stage alone.
"""
