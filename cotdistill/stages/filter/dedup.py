"""Near duplicates within a question: MinHash signatures (datasketch) compared with the kept ones.

    flags = near_duplicate_flags(texts, threshold=0.8, ngram=3, num_perm=64)     # phases.py, per question
"""

from __future__ import annotations

from typing import Any, Sequence


def near_duplicate_flags(texts: Sequence[str], threshold: float, ngram: int, num_perm: int) -> list[bool]:
    """True for each text whose MinHash Jaccard estimate with an earlier kept text is >= threshold.

    datasketch computes the signatures; with at most a few dozen rationales per question, comparing each
    signature with the kept ones directly is cheaper than building an LSH index per question.
    """
    import numpy as np
    import xxhash
    from datasketch import MinHash

    shingles = []
    for text in texts:
        words = text.lower().split()
        grams = {g.encode() for g in map(" ".join, zip(*(words[i:] for i in range(ngram))))}
        shingles.append(grams or {" ".join(words).encode()})
    # xxh32 instead of datasketch's default sha1: the same 32-bit hashes for MinHash, several times faster.
    signatures = MinHash.bulk(shingles, num_perm=num_perm, hashfunc=xxhash.xxh32_intdigest)
    kept: list[Any] = []
    flags = []
    for sig in signatures:
        values = sig.hashvalues
        if kept and float(np.max(np.mean(np.stack(kept) == values, axis=1))) >= threshold:
            flags.append(True)
        else:
            flags.append(False)
            kept.append(values)
    return flags
