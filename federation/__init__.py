"""The platform of a "1+N" materials data program: harvests node catalogs, searches across them and
brokers members' downloads to the owning node (issue 18; see README.md)."""
