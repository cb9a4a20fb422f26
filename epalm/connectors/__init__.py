"""Connectors: what turns frozen perception into the LM's perceptual tokens (a registry).

- ``ep-alm``: eP-ALM's projections of each level's summary (one token per level; the default);
- ``all-tokens``: every token of the last levels, projected (LLaVA's way);
- ``token-learner``: K learned attention maps pool the tokens into K (TokenLearner);
- ``resampler``: K latent queries cross-attend to the tokens (Perceiver resampler);
- ``joint-fusion``: the tokens and the prompt's text reduced and fused together into K
  (Joint Adaptive Representations).

Add one with ``@register_connector("name")`` on a ``Connector`` subclass.
"""

from epalm.connectors import all_tokens, ep_alm, joint_fusion, resampler, token_learner
from epalm.connectors.base import (
    Connector,
    LevelProjection,
    build_connector,
    connector_class,
    known_connectors,
    register_connector,
)
from epalm.connectors.prompt import SoftPrompt

__all__ = [
    "Connector",
    "LevelProjection",
    "SoftPrompt",
    "all_tokens",
    "build_connector",
    "connector_class",
    "ep_alm",
    "joint_fusion",
    "known_connectors",
    "register_connector",
    "resampler",
    "token_learner",
]
