"""The network: `network` (backbone registry + MLP head), `losses` (EMD and friends), `iqa` features."""
