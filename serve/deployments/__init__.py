"""The model deployments of the Serve app, one per runtime: each holds a ``RuntimeCache`` of bundle versions
(serve/served.py: the version is the deployment's ``user_config``) and answers by calling prefmine.serving.

- ``encoder.EncoderDeployment``: text embeddings, Search's text retrieval, ModelInfo's dim.
- ``ranker.RankerDeployment``: user state and candidates (batched), item scores, similar items, the profile's
  preference, explanations, and Recommend's slate by the same version's policy (which it also holds).
"""

from serve.deployments.common import MAX_QUEUED, one_thread, require_loaded
from serve.deployments.encoder import EncoderDeployment
from serve.deployments.ranker import RANKER_BATCH, RANKER_BATCH_WAIT_S, RankerDeployment

__all__ = ["MAX_QUEUED", "RANKER_BATCH", "RANKER_BATCH_WAIT_S", "EncoderDeployment", "RankerDeployment",
           "one_thread", "require_loaded"]
