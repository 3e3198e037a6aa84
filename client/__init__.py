"""The edge: private target windows and the target-side UNI-KD terms. Imports `shared` only."""
