"""The two ignore values: one in the samples, one in the label files other tools write.

They differ on purpose. In a sample (:mod:`datamodules.contract`) ignore is ``IGNORE_INDEX`` (-1), because
ADE-847, PC-459 and LVIS have a real class 255. In 8-bit label PNGs on disk, ignore is by convention
``PNG_IGNORE`` (255): readers map it to -1 as they read (their ``ignore_values`` option), and ``bench eval
semantic`` skips it in ground-truth files by default. Nothing else lives here, so the command line can name
these without importing torch or numpy.
"""

IGNORE_INDEX = -1  # in samples: int64 ``semantic`` maps
PNG_IGNORE = 255  # in files: the usual "unlabelled" value of 8-bit label maps
