"""The former name of diffjax's U-Net, kept so that `from diffjax.models.unet import UNet` works.

diffjax's U-Net is score_sde's NCSN++ network exactly (`diffjax/models/ncsnpp.py`); the earlier
approximation of DDPM++ is gone. Configs may keep `model.name = "unet"`, which builds NCSNpp.
"""

from diffjax.models.ncsnpp import NCSNpp as UNet

__all__ = ["UNet"]
