"""The study's plan from the config: checks across settings, the job grid, output lists and code versions. Used by the Snakefile at parse time; the highest layer besides verify."""
