"""Config, data, evaluation, search, comparison, plots and logging."""
from utils.compat import install_dok_update

install_dok_update()  # MMRec model files call dok_matrix._update, gone since scipy 1.13
