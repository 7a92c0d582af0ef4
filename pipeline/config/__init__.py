"""Typed configuration: the schema (frozen dataclasses) and its loader (YAML + overrides)."""
from pipeline.config.load import as_override, config_diff, get, load_config, to_dict, to_yaml, validate
from pipeline.config.schema import (IMAGENET_MEAN, IMAGENET_STD, ConfigError, DataConfig, DistributedConfig,
                                    LoggingConfig, ModelConfig, OptimConfig, RootConfig, TrainerConfig,
                                    WandbConfig)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ConfigError", "DataConfig", "DistributedConfig", "LoggingConfig",
           "ModelConfig", "OptimConfig", "RootConfig", "TrainerConfig", "WandbConfig", "as_override", "config_diff",
           "get", "load_config",
           "to_dict", "to_yaml", "validate"]
