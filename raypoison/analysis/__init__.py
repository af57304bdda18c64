"""From stored rows to the benchmark's answers: statistics and intervals, the report's tables and
figures, comparisons between runs, and a run's status. Imports no torch (a contract in .ci/run)."""
