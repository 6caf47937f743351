"""The config record of `experiments.classify`: `jaxode.train.classify_config.ClassifyConfig`
(the library reads it back from a run folder).  The named configs are in
`experiments.configs.carrara` and `experiments.configs.chen`."""

from jaxode.train.classify_config import ClassifyConfig

__all__ = ["ClassifyConfig"]
