"""The CMD loss (cmd.py) and its terms, one file each: image.py (L_I), region.py (L_R), mil.py
(L_S / L_T and the bag pooling), centers.py (the teacher centers)."""
from cmd_model.loss.cmd import MIL_FORMS, TERM_NAMES, CMDLoss, NonFiniteLossError

__all__ = ["CMDLoss", "NonFiniteLossError", "MIL_FORMS", "TERM_NAMES"]
