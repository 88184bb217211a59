"""Weight initialisers with MMRec's names; use them as ``self.apply(xavier_normal_initialization)``."""
from torch import nn


def xavier_normal_initialization(module: nn.Module) -> None:
    """Xavier-normal weights for Embedding and Linear layers; zero biases."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.xavier_normal_(module.weight.data)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.constant_(module.bias.data, 0.0)


def xavier_uniform_initialization(module: nn.Module) -> None:
    """Xavier-uniform weights for Embedding and Linear layers; zero biases."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.xavier_uniform_(module.weight.data)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.constant_(module.bias.data, 0.0)
