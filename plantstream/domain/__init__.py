"""Domain knowledge every stage shares: material specifications, units, tag validation rules.

Core layer: imports nothing but the contract and third-party libraries."""
