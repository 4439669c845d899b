"""Dataset logic with no database: durations, resampling with gap rules, lot splits, labels."""
