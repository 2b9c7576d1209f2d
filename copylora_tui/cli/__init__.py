"""The ``copylora`` command line. Parsing and presentation only: the work is in ``engine``."""
