"""ml_collections experiment configs (`get_config(arg)`) and ablation sweeps."""
