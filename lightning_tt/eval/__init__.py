"""Evaluation: retrieval metrics of both protocols, the Faiss index and the callback that uses them."""
