"""Indexing and refinement of EBSD patterns: dictionary indexing (:mod:`~ebsd_keras.indexing.dictionary`, with
BOBYQA and kikuchipy refinement against a master pattern), gradient and BOBYQA refinement through any pattern
generator (:mod:`~ebsd_keras.indexing.refinement`), and the typed generators they run on
(:mod:`~ebsd_keras.indexing.generator`: a trained model or a master pattern).

Built on :mod:`ebsd_keras.serving` and the layers below; nothing here imports :mod:`ebsd_keras.evaluation`.
Submodules are imported on use (the dictionary needs the GPL ``emsoft`` extra).
"""
