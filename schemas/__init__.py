"""The contract shared by host and runner: row models, DDL, time and id helpers, the list of a runner's detached
children. No I/O but the clock (``clock``) and the /proc reads and kills of ``detached``."""
