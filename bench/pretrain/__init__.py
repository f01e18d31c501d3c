"""Pretraining of the suite's own tiny CLIP (``tiny-clip-synth``) on captioned synth scenes.

``world`` draws the image–caption pairs (scenes from :mod:`datamodules.synth`, captions naming colour, shape,
texture and place, some words and combinations held out); ``train`` runs the deterministic contrastive training
and writes the weights that :mod:`bench.models.clip` loads. It lives beside ``module.py`` rather than in
``bench/models`` because it joins the data generator and the model, which know nothing of each other.
``scripts/pretrain_tiny_clip.py`` is the command line.
"""
