"""Config-as-code: each module has `get_config()` returning an ml_collections.ConfigDict.

Select one with `--config=configs/NAME.py[:ARG]`, override any field with `--config.a.b=value`.
"""
