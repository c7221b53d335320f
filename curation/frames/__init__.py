"""Documents as DataFrames: ``flattening`` (documents <-> level frames, losslessly), ``snapshot`` (fetched
documents with their frames, saved and loaded) and ``views`` (typed columns and exploded values for analysis).
"""
