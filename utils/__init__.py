"""Everything above the model and the data: runtime, training, evaluation.

Layers, bottom to top (arrows only point down; see docs/design.md):
  utils.errors, utils.runtime   errors and where a process runs (modules/ and dataloaders/ may use these)
  modules/, dataloaders/        the model and the data
  utils.options                 flags shared by the training and evaluation command lines
  utils.train, utils.eval       the training run and the evaluation
"""
