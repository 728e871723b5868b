"""The method's stages, as the paper describes them: prompts, seeds, imitation data,
the referee and the hard/easy split, generation, novelty, diversity and data health.
"""
