# default-architecture models with seeded random weights (NOT trained): conversion figures only
import keras
from lookserve.training import embedder, views
from lookserve.training.common import save_weights
keras.utils.set_random_seed(0)
e = embedder.build_model(embedder.EmbedderConfig()); save_weights(e, embedder.EmbedderConfig().to_dict(), "/tmp/untrained/embedder", "embedder")
v = views.build_model(views.ViewConfig()); save_weights(v, views.ViewConfig().to_dict(), "/tmp/untrained/view_classifier", "view_classifier")
