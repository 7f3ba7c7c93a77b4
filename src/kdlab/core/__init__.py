"""The lowest layer above :mod:`kdlab.errors` and :mod:`kdlab.runtime`: the registry class
and plugins (:mod:`.registry`, :mod:`.plugins`, :mod:`.autoimport`), the run configuration
and its recipe YAML (:mod:`.config`, :mod:`.recipe_yaml`), the values each setting accepts,
declared on its field (:mod:`.settings`, :mod:`.domains`) and the version (:mod:`.version`).
Nothing here imports a higher layer."""
