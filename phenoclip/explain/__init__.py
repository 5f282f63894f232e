"""phenoclip.explain: captum attributions of a model's output to one modality's input features.

- :mod:`~phenoclip.explain.attribution`: the modality as a dense differentiable function, the methods
- :mod:`~phenoclip.explain.targets`: what is explained (ContIG's contrastive loss, a fine-tuned output)
- :mod:`~phenoclip.explain.run`: ``phenoclip explain`` and ``explain merge`` as library functions
- :mod:`~phenoclip.explain.job`: a prepared run and its attribution loop, which writes the store's rows
- :mod:`~phenoclip.explain.convergence`: whether the attributions add up to the change they explain
- :mod:`~phenoclip.explain.shards`: ``--part/--num-parts`` and the run fingerprint
- :mod:`~phenoclip.explain.summary`, :mod:`~phenoclip.explain.outputs`, :mod:`~phenoclip.explain.volumes`:
  the ranked table, per-gene aggregation, plots and NIfTI volumes
"""
