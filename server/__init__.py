"""The cloud: teacher, labelled source data, the source-side UNI-KD terms and the round loop.

Imports `shared` only; never `client`.
"""
