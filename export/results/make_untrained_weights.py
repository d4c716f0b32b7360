"""Default-architecture embedder and view classifier with seeded random weights (NOT trained).

Used only for the conversion figures in ``untrained_variants.txt``:
``.venv/bin/python export/results/make_untrained_weights.py`` writes ``/tmp/untrained/{embedder,view_classifier}``.
"""

import keras

from lookserve.training import embedder, views
from lookserve.training.common import save_weights

keras.utils.set_random_seed(0)
save_weights(embedder.build_model(embedder.EmbedderConfig()), embedder.EmbedderConfig().to_dict(),
             "/tmp/untrained/embedder", "embedder")
save_weights(views.build_model(views.ViewConfig()), views.ViewConfig().to_dict(),
             "/tmp/untrained/view_classifier", "view_classifier")
