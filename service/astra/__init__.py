"""ASTRA at serving time: the FAISS index over the classifier vectors and BM25 over the titles."""
