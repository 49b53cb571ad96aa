"""evolution: the genetic algorithm.

Owns: the generational loop (loop.py: variation, evaluation through an evaluator,
Lamarckian write-back, selection, successive halving, history rows and checkpoint state),
the variation operators registered in the DEAP toolbox (operators.py), objectives, fitness,
NSGA-II, the hall of fame / Pareto archive and the hypervolume (fitness.py), and progress
display (progress.py).

May import: evaluators, store, train (the job types), topology, problem, config, seeds,
draws, faults. DEAP objects never leave this package's process: workers get plain jobs.
"""
