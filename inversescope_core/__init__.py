"""The method: configs, sites, extraction, models and training. No orchestration or storage."""
